"""Hits as a contact sheet and as a COCO file that pycocotools loads; photos gone or
changed since indexing shown grey and named; stdout closed or its reader gone early
(where the outputs may be written: test_export_paths.py)."""

import contextlib
import io
import json
import os

import pytest
from PIL import Image
from pycocotools.coco import COCO
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, index_paths


def test_query_show_and_export_coco(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    sheet, coco_file = tmp_path / "hits.png", tmp_path / "hits.json"
    result = CliRunner().invoke(
        app,
        [
            "query",
            "a red cup",
            "--db",
            str(tmp_path / "db"),
            "-k",
            "7",
            "--json",
            "--show",
            str(sheet),
            "--export-coco",
            str(coco_file),
        ],
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)  # status lines went to stderr
    assert Image.open(sheet).size == (5 * 192, 2 * (192 + 30))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_file))
        results = coco.loadRes(json.loads(coco_file.read_text())["annotations"])  # each annotation has a score
    assert coco.cats[1]["name"] == "a red cup" and len(coco.anns) == 7 and len(results.anns) == 7
    assert len(hits) == 7
    for ann, hit in zip(coco.loadAnns(sorted(coco.anns)), hits, strict=True):
        assert ann["score"] == hit["score"] and ann["bbox"] == hit["bbox"]
        assert int(coco.annToMask(ann).sum()) == hit["area"]
        assert coco.imgs[ann["image_id"]]["file_name"] == hit["image"]
        assert ann["image_id"] == hit["image_id"]  # the index's id: the same photo has it in every export


def test_a_photo_gone_since_indexing_is_a_grey_tile_and_said(tmp_path):
    """The sheet is still written when a hit's photo can no longer be read; the
    others keep their tiles, and stderr names the photo and what to do."""
    import numpy as np

    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    (photos / "sub" / "coffee.png").unlink()
    sheet = tmp_path / "hits.png"
    args = [
        "query",
        "a red cup",
        "--db",
        str(tmp_path / "db"),
        "-k",
        "10",
        "--per-image",
        "--json",
        "--show",
        str(sheet),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 2 and "1 photo gone, unreadable or changed since indexing, shown grey" in result.stderr
    said = " ".join(result.stderr.split())  # the commands suggested name the index, as a shell reads them
    assert "coffee.png (gone)" in said and f"`usesearch prune --db {tmp_path / 'db'}` removes them" in said, said
    assert f"`usesearch index PATHS --db {tmp_path / 'db'}` again" in said
    tiles = np.asarray(Image.open(sheet))
    gone = [i for i, h in enumerate(hits) if h["image"].endswith("coffee.png")][0]
    tile = tiles[20:60, gone * 192 + 20 : gone * 192 + 60]  # inside the grey square, above its text
    assert (tile == 200).all()


def test_an_export_names_the_photos_gone_or_changed_since_indexing(tmp_path, monkeypatch):
    """`--show` drew such photos grey and said so, while `--export-coco` wrote their
    masks as indexed without a word (exit 0): a training set made of it would not fit
    the photos on disk. By stat, each photo once; the export itself is as before."""
    from usesearch.indexer import known_images

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # the photos are written just now: their stats kept
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee", "chelsea"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    runner = CliRunner()
    args = ["query", "a cat", "--db", str(db), "-k", "200", "--export-coco", str(tmp_path / "hits.json")]
    fresh = runner.invoke(app, args)
    assert fresh.exit_code == 0 and "not on disk" not in fresh.stderr, fresh.stderr
    (photos / "astronaut.png").unlink()
    Image.open(photos / "chelsea.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "chelsea.png")
    os.utime(photos / "sub" / "coffee.png", (1e9, 1e9))  # touched, the same content: its masks fit (was called changed)
    stale = runner.invoke(app, args)
    assert stale.exit_code == 0, stale.output
    said = " ".join(stale.stderr.split())
    assert "2 photo(s) in " in said and "are not on disk here or changed since indexing, their masks as indexed" in said
    assert f"not on disk: {photos / 'astronaut.png'}; changed: {photos / 'chelsea.png'};" in said, said
    assert f"`usesearch prune --db {db}` removes photos gone for good" in said
    assert f"`usesearch index PATHS --db {db}` again embeds the changed" in said
    assert len(json.loads((tmp_path / "hits.json").read_text())["images"]) == 3  # the export as before
    # A listing alone (a table, or --json) names the gone one too, where it said nothing until
    # `prune`; by stat alone, without the catalog's read a photo that telling changed takes.
    for listing in (args[:6], [*args[:6], "--json"]):
        listed = runner.invoke(app, listing)
        said = " ".join(listed.stderr.split())
        assert (
            listed.exit_code == 0
            and f"1 photo(s) among the hits are not on disk here (not on disk: {photos / 'astronaut.png'};" in said
        ), said
        assert "chelsea" not in said and "changed" not in said and f"`usesearch prune --db {db}` removes" in said
    assert len(json.loads(listed.stdout)) > 0  # stdout still the JSON alone
    # Past its time a listing stops checking (a stat per photo was uncapped), and says so.
    from usesearch.cli import search_output

    monkeypatch.setattr(search_output, "LISTING_CHECK_S", 0)
    for name in ("chelsea.png", "sub/coffee.png"):
        (photos / name).unlink()
    said = " ".join(runner.invoke(app, args[:6]).stderr.split())
    assert "1 photo(s) among the hits (of the first 1 of 3 photos, checked in 0 s) are not on disk here" in said, said
    write_photos(tmp_path / "photos", ("astronaut", "coffee", "chelsea"))  # all back: cut short, and said
    said = " ".join(runner.invoke(app, args[:6]).stderr.split())
    assert "the hits' photos on disk: the first 1 of 3 checked, the rest not" in said, said


def test_a_photo_resized_since_indexing_is_a_grey_tile_not_a_crash(tmp_path):
    """Its stored mask belongs to the old pixels: laid over the new ones it would be
    wrong, or an empty crop."""
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    coffee = photos / "sub" / "coffee.png"
    Image.open(coffee).resize((20, 12)).save(coffee)
    args = ["query", "a red cup", "--db", str(tmp_path / "db"), "--per-image", "--show", str(tmp_path / "s.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "1 photo gone, unreadable or changed since indexing" in result.stderr
    assert "coffee.png (changed)" in result.stderr and (tmp_path / "s.png").is_file()


def test_two_photos_showing_the_same_path_stay_two_coco_images():
    """A name with undecodable bytes shows as ``lat\\xe9n.png``, as does a file named
    with that backslash: the export keys images by id, not by the shown name."""
    import numpy as np

    from usesearch.indexer.export import hits_to_coco
    from usesearch.indexer.hits import Hit
    from usesearch.masks import rle

    def hit(rank, image_id, hw):
        mask = np.zeros(hw, bool)
        mask[:2, :2] = True
        return Hit(rank, 0.5, rank, image_id, "p/lat\\xe9n.png", (0, 0, 2, 2), 4, rle.encode(mask))

    coco = hits_to_coco([hit(1, 7, (152, 192)), hit(2, 9, (128, 128)), hit(3, 7, (152, 192))], "q")
    sizes = {image["id"]: (image["height"], image["width"]) for image in coco["images"]}
    assert sorted(sizes.values()) == [(128, 128), (152, 192)]
    for ann in coco["annotations"]:
        assert tuple(ann["segmentation"]["size"]) == sizes[ann["image_id"]]


def test_export_coco_to_stdout_leaves_stdout_to_the_coco_file(tmp_path):
    """`query ... --export-coco /dev/stdout | jq .`: the results table went to stdout
    ahead of the JSON, and jq stopped at its first line. The listing goes to stderr."""
    import subprocess
    import sys

    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    listings = ([], ["--json"])
    procs = [  # at once: each spends seconds importing its libraries
        subprocess.Popen(
            [sys.executable, "-m", "usesearch", "query", "a red cup", "--db", str(tmp_path / "db"), "-k", "3"]
            + listing
            + ["--export-coco", "/dev/stdout"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for listing in listings
    ]
    for listing, proc in zip(listings, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert len(json.loads(stdout)["annotations"]) == 3  # the COCO file, and nothing else
        assert ("rank" in stderr) if not listing else json.loads(stderr[stderr.index("[") : stderr.rindex("]") + 1])


def index_two_photos(folder):
    """Two photos indexed under ``folder``: their folder and the index's."""
    photos = write_photos(folder / "photos", ("astronaut", "coffee"))
    index_paths([photos], folder / "db", IndexOptions(**OPTS))
    return photos, folder / "db"


@pytest.fixture
def indexed(tmp_path):
    return index_two_photos(tmp_path)


def test_a_webp_sheet_is_refused_past_what_webp_holds_only(indexed, tmp_path, monkeypatch):
    """WebP's sides stop at 16,383 pixels: 365 hits. The limit is the hits found, not -k."""
    from usesearch.errors import UsesearchError
    from usesearch.indexer.export import check_sheet

    check_sheet(tmp_path / "s.webp", 365)
    check_sheet(tmp_path / "s.png", 1000)
    with pytest.raises(UsesearchError, match="a WebP sheet holds 365 hits at most"):
        check_sheet(tmp_path / "s.webp", 366)
    _, db = indexed  # a few dozen segments: -k 400 finds fewer than 365
    result = CliRunner().invoke(
        app, ["query", "a cat", "--db", str(db), "-k", "400", "--show", str(tmp_path / "s.webp")]
    )
    assert result.exit_code == 0 and (tmp_path / "s.webp").is_file(), result.output
    # An index holding more than a WebP sheet can: refused before the search (seconds, a gigabyte), not after.
    from usesearch.indexer import search, vectors

    monkeypatch.setattr(vectors.Vectors, "ntotal", property(lambda self: 10_000))
    searched: list = []
    monkeypatch.setattr(search.SegmentIndex, "query", lambda *a, **kw: searched.append(a) or [])
    args = ["query", "a cat", "--db", str(db), "--show", str(tmp_path / "t.webp"), "-k"]
    refused = CliRunner().invoke(app, [*args, "400"])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "holds 365 hits at most, and this search may find 400: write a .png" in said
    assert not searched
    assert CliRunner().invoke(app, [*args, "365"]).exit_code == 0 and searched  # (as many as it holds: searched)


def test_a_photo_swapped_for_a_fifo_or_another_picture_is_a_grey_tile(indexed, tmp_path):
    """A FIFO under a photo's name hung the sheet for ever (read as a file, waiting
    for a writer); a photo replaced by another of the same size had the old segment
    drawn on the new picture."""
    import numpy as np

    photos, db = indexed
    coffee = photos / "sub" / "coffee.png"
    coffee.unlink()
    os.mkfifo(coffee)
    astronaut = photos / "astronaut.png"
    Image.open(astronaut).rotate(180).save(astronaut)  # the same size, other pixels
    sheet = tmp_path / "s.png"
    result = CliRunner().invoke(app, ["query", "a red cup", "--db", str(db), "--per-image", "--show", str(sheet)])
    assert result.exit_code == 0 and "2 photos gone, unreadable or changed since indexing" in result.stderr, (
        result.output
    )
    tiles = np.asarray(Image.open(sheet))
    assert (tiles[20:60, 20:60] == 200).all() and (tiles[20:60, 192 + 20 : 192 + 60] == 200).all()


def _early_closed_readers(*commands):
    """Each command with its stdout a pipe whose reader is gone before it writes (`| head`),
    run at once (each spends seconds importing its libraries): (exit code, stderr) each."""
    import subprocess
    import sys

    procs = [
        subprocess.Popen([sys.executable, "-m", "usesearch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args in commands
    ]
    for proc in procs:
        proc.stdout.close()
    return [(proc.returncode, err.decode()) for proc in procs for _, err in [proc.communicate(timeout=120)]]


def test_a_reader_gone_early_costs_neither_file_and_a_coco_file_on_stdout_ends_quietly(indexed, tmp_path):
    """`query ... --json --export-coco c.json --show s.png | head -1` wrote neither file:
    the listing went first and its closed pipe ended the command. `--export-coco
    /dev/stdout | head` said "cannot write /dev/stdout: Broken pipe", exit 2."""
    _, db = indexed
    coco, sheet = tmp_path / "c.json", tmp_path / "s.png"
    (code, err), (code_stdout, err_stdout) = _early_closed_readers(
        ["query", "a cup", "--db", str(db), "--json", "--export-coco", str(coco), "--show", str(sheet)],
        ["query", "a cup", "--db", str(db), "--export-coco", "/dev/stdout"],
    )
    assert code == 1 and coco.is_file() and sheet.is_file(), err
    assert code_stdout == 1 and "error" not in err_stdout, err_stdout


def test_a_closed_stdout_is_one_line_not_a_traceback(indexed):
    import subprocess
    import sys

    _, db = indexed
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.close(1); from usesearch.cli.app import main; import sys; "
            "sys.stdout = None; sys.argv = ['usesearch', 'query', 'a cup', '--db', sys.argv[1]]; main()",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        done.returncode == 2
        and done.stderr.strip() == "error: standard output is closed: send it to a file, or to /dev/null"
    )


def test_an_audit_sheet_says_each_tiles_classes_and_a_leaks_other_photo(tmp_path):
    """The swapped sheet showed no class, and a leak's tile only its first photo: each
    tile now says what it is about before its photo's name."""
    import numpy as np
    from PIL import Image

    from usesearch.indexer.audit.report import _note
    from usesearch.indexer.export import contact_sheet
    from usesearch.indexer.hits import Hit
    from usesearch.masks import rle

    assert _note({"labelled": "cat", "preferred": "dog"}) == "cat->dog"
    assert _note({"labelled": "cat"}) == "cat" and _note({"proposed": "cup"}) == "cup"
    leak = {"kind": "near duplicate", "paths": ["/a/x.png", "/b/y copy.png"]}
    assert _note(leak, "/a/x.png") == "= y copy.png" and _note(leak, "/b/y copy.png") == "= x.png"
    # A same-content group of three drew its first two photos alone, each naming one other.
    from types import SimpleNamespace

    from usesearch.indexer.audit.report import _segments_drawn

    group = {"kind": "same content", "images": [5, 15, 16], "paths": ["/t/a.png", "/v/b.png", "/v/c.png"]}
    largest = SimpleNamespace(image_segment_ids=lambda image_id: [image_id * 10, image_id * 10 + 1])
    assert _segments_drawn(group, largest) == [50, 150, 160]  # type: ignore[arg-type]
    assert _note(group, "/t/a.png") == "= b.png and 1 more"
    Image.new("RGB", (64, 48), (120, 90, 60)).save(tmp_path / "p.png")
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:40] = True
    hit = Hit(1, 0.5, 1, 1, str(tmp_path / "p.png"), (10, 10, 30, 20), 600, rle.encode(mask))
    plain, _ = contact_sheet([hit], tmp_path / "plain.png")
    assert Image.open(plain).size == (192, 192 + 30)  # one hit, one tile wide: it was five, four of them blank
    noted, _ = contact_sheet([hit], tmp_path / "noted.png", notes=["cat->dog"])
    assert np.asarray(Image.open(plain)).tolist() != np.asarray(Image.open(noted)).tolist()


def test_names_past_ascii_are_drawn_as_they_are_or_folded_never_as_one_box(monkeypatch):
    """Pillow's own font has ASCII glyphs only: "rocket ü.jpg" and "rocket é.jpg" were
    captioned with the same empty box. DejaVu Sans where the system has it, else the
    name folded to ASCII (accents dropped, other letters "?")."""
    import numpy as np
    from PIL import ImageDraw, ImageFont

    from usesearch.tasks import visualize

    def drawn(text: str) -> np.ndarray:
        picture = Image.new("RGB", (120, 20), "white")
        visualize.label(ImageDraw.Draw(picture), (2, 2), text, (0, 0, 0))
        return np.asarray(picture)

    assert not np.array_equal(drawn("rocket ü"), drawn("rocket é"))
    if visualize.font(11).getname()[0] == "DejaVu Sans":  # (these images' font): a letter it lacks, "?", not a box
        assert visualize.drawable("rocket ü café 東京 Ω.jpg", 11) == "rocket ü café ?? Ω.jpg"
        assert visualize.drawable("हिं e\u0301", 11) == "??? e\u0301"  # a vowel sign it lacks: no box (one it has: kept)
    assert visualize.drawable("a\u2029b\u0085c\n.jpg", 11) == "a?b?c?.jpg"  # (U+2029 failed Pillow's layout)
    drawn("a\u2029b")
    monkeypatch.setattr(visualize, "font", lambda size: ImageFont.load_default(size=size))  # no font on the system
    assert visualize.drawable("rocket ü café 東京.jpg", 11) == "rocket u cafe ??.jpg"
    assert not np.array_equal(drawn("rocket ü"), drawn("rocket é"))
    # A long name cut to the tile's width, marked ("..." in Pillow's font), not run into the next tile.
    picture = Image.new("RGB", (400, 20), "white")
    visualize.label(ImageDraw.Draw(picture), (0, 2), "a" * 80 + ".jpg", (0, 0, 0), width=100)
    inked = np.nonzero((np.asarray(picture) < 128).any(axis=(0, 2)))[0]
    assert 80 <= inked.max() < 100


def test_a_legends_long_class_name_is_cut_with_a_mark_not_at_22_characters(monkeypatch):
    """`segment --overlay`'s legend cut each name at 22 characters, unmarked, and a wide
    one still ran past the picture's edge: now cut to the legend's width, with "…"."""
    import numpy as np

    from usesearch.tasks import visualize

    said = []
    monkeypatch.setattr(visualize, "label", lambda draw, at, text, fill, size=11, width=0: said.append((text, width)))
    labels = np.array([[0, 1], [1, 255]], np.uint8)
    picture = visualize.label_overlay(np.zeros((2, 2, 3), np.uint8), labels, ["cat", "w" * 70])
    assert said == [("cat", 140), ("w" * 70, 140)] and picture.width == 2 + 160


def test_a_search_with_no_hits_writes_no_sheet_and_says_so(indexed, tmp_path):
    """`--min-score 0.99 --show none.png` wrote a blank white sheet, unsaid."""
    _, db = indexed
    sheet = tmp_path / "none.png"
    args = ["query", "a cat", "--db", str(db), "--min-score", "0.99", "--show", str(sheet)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and f"no hits: {sheet} not written" in result.output and not sheet.exists()
