"""Hits as a contact sheet and as a COCO file that pycocotools loads."""

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
from usesearch.io.atomic import save_picture

PRESET = ["--preset", "tiny", "--masker", "felzenszwalb"]  # (segment's models: tiny, and no SAM to build)


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
    for ann, hit in zip(coco.loadAnns(sorted(coco.anns)), hits):
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
    assert len(hits) == 2 and "1 photo(s) could not be read or changed, shown grey" in result.stderr
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


def test_a_photo_resized_since_indexing_is_a_grey_tile_not_a_crash(tmp_path):
    """Its stored mask belongs to the old pixels: laid over the new ones it would be
    wrong, or an empty crop."""
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    coffee = photos / "sub" / "coffee.png"
    Image.open(coffee).resize((20, 12)).save(coffee)
    args = ["query", "a red cup", "--db", str(tmp_path / "db"), "--per-image", "--show", str(tmp_path / "s.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "1 photo(s) could not be read or changed" in result.stderr
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


@pytest.fixture
def indexed(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    return photos, tmp_path / "db"


def test_an_output_that_would_replace_a_photo_or_the_other_output_is_refused_first(indexed, tmp_path, monkeypatch):
    """`--show photos/rocket.png` drew the sheet over the indexed photo, `--show q.png`
    with `similar --image q.png` over the photo searched, and `--show x --export-coco x`
    left only the JSON; `--export-coco -` wrote a file named "-", not standard output."""
    photos, db = indexed
    monkeypatch.chdir(tmp_path)
    photo = photos / "astronaut.png"
    before = photo.read_bytes()
    searched = tmp_path / "sheet.png"  # a picture usesearch wrote, searched by a region of it
    save_picture(Image.open(photo), searched)
    was = searched.read_bytes()
    runner = CliRunner()
    cases = [
        (["query", "a cat", "--show", str(photo)], "--show"),
        (["query", "a cat", "--show", str(tmp_path / "x.png"), "--export-coco", str(tmp_path / "x.png")], "a picture"),
        (["similar", "--image", str(photo), "--point", "5,5", "--show", str(photo)], "is no picture usesearch wrote"),
        (["similar", "--image", str(searched), "--point", "5,5", "--show", str(searched)], "--image input"),
    ]
    # An index's own files (`--export-coco db/segments.sqlite` replaced the catalog); a sheet
    # among indexed photos (the next index took it for one); JSON under a picture's name.
    (tmp_path / "keep.png").write_bytes(before)
    cases += [
        (["query", "a cat", "--export-coco", str(db / "segments.sqlite")], "whose files usesearch writes"),
        (["similar", "1", "--export-coco", str(db / "embeddings" / "notes.json")], "whose files usesearch writes"),
        (["query", "a cat", "--show", str(photos / "sheet.png")], "lies among indexed photos"),
        (["similar", "1", "--show", str(photos / "like.png")], "lies among indexed photos"),
        (["query", "a cat", "--export-coco", str(tmp_path / "keep.png")], "names a picture: name a .json file"),
        (["query", "a cat", "--export-coco", "-"], "standard output is /dev/stdout"),
    ]
    catalog = (db / "segments.sqlite").read_bytes()
    for args, why in cases:
        result = runner.invoke(app, [*args, "--db", str(db)])
        said = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and why in said, (args, result.output)
    assert photo.read_bytes() == before and not list(tmp_path.glob("x.png")) and searched.read_bytes() == was
    assert (db / "segments.sqlite").read_bytes() == catalog and (tmp_path / "keep.png").read_bytes() == before
    assert not list(photos.glob("*.png"))[1:] and not (db / "embeddings" / "notes.json").exists()
    assert not (tmp_path / "-").exists()
    ok = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(db / "sheet.png")])
    assert ok.exit_code == 0 and (db / "sheet.png").is_file(), ok.output  # a picture in its folder: left out of walks


def test_an_output_into_another_index_or_usesearch_folder_is_refused_whatever_its_name(indexed, tmp_path):
    """`query --db A --export-coco B/segments.sqlite` (or B's embedding chunk, or a link
    named x.json to either) replaced index B's file and destroyed it: only the queried
    index's folder was guarded. Now no file a command writes may lie in any folder
    usesearch writes, at any depth, links followed; a picture in an index's folder
    itself (`--show`) is still written."""
    import shutil

    _, db = indexed
    other = tmp_path / "other.use"
    shutil.copytree(db, other)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trainer.safetensors").write_bytes(b"")
    (tmp_path / "x.json").symlink_to(other / "segments.sqlite")
    chunk = next((other / "embeddings").glob("*.f16"))
    before = {p: p.read_bytes() for p in (other / "segments.sqlite", chunk)}
    runner = CliRunner()
    for args in (
        ["query", "a cat", "--export-coco", str(other / "segments.sqlite")],
        ["similar", "1", "--export-coco", str(chunk)],
        ["query", "a cat", "--export-coco", str(tmp_path / "x.json")],
        ["query", "a cat", "--export-coco", str(other / "calibration.json")],
        ["query", "a cat", "--export-coco", str(tmp_path / "run" / "hits.json")],
        ["query", "a cat", "--show", str(other / "embeddings" / "sheet.png")],
    ):
        result = runner.invoke(app, [*args, "--db", str(db)])
        said = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and "whose files usesearch writes" in said, (args, result.output)
    assert all(p.read_bytes() == data for p, data in before.items())
    assert not (other / "calibration.json").exists() and not (tmp_path / "run" / "hits.json").exists()
    ok = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(other / "sheet.png")])
    assert ok.exit_code == 0 and (other / "sheet.png").is_file(), ok.output


def test_a_picture_written_anywhere_under_an_indexed_folder_is_refused(tmp_path):
    """`--show` into the indexed folder's root or a new subfolder of it, or into the
    photos' folder spelt through the link they were indexed by, was written: the next
    `usesearch index` of the folder took the sheet for a photo."""
    photos = write_photos(tmp_path / "archive" / "2020", ("astronaut", "coffee")).parent
    (tmp_path / "link").symlink_to(photos, target_is_directory=True)
    db = tmp_path / "db"
    index_paths([tmp_path / "link"], db, IndexOptions(**OPTS))
    (photos / "2020" / "new").mkdir()
    runner = CliRunner()
    for sheet in (photos / "sheet.png", photos / "2020" / "new" / "sheet.png", tmp_path / "link" / "sheet.png"):
        result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(sheet)])
        said = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and "lies among indexed photos" in said, (sheet, result.output)
        assert not sheet.exists()
    (tmp_path / "outside").mkdir()  # linked from the archive: the walk does not follow a link out of it
    (photos / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    for fine in (tmp_path / "sheet.png", db / "sheet.png", photos / "out" / "sheet.png"):
        result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(fine)])
        assert result.exit_code == 0 and fine.is_file(), result.output


def test_an_output_never_replaces_a_picture_usesearch_did_not_write_and_replaces_its_own(indexed, tmp_path):
    """`query --db A --show B/photo.jpg` drew the sheet over a photo index B holds (and
    `segment --out`/`--overlay` a label map over a demo's photo): only the queried
    index's photos were guarded, and B's next run indexed the sheet as the photo. An
    existing picture without usesearch's mark is never replaced; a sheet, label map or
    overlay it wrote is (a query re-run with the same --show)."""
    from usesearch.io.atomic import PICTURE_MARK, SOFTWARE_TAG, written_by_usesearch

    photos, db = indexed
    other = write_photos(tmp_path / "b", ("chelsea",))
    photo = other / "chelsea.png"
    before = photo.read_bytes()
    runner = CliRunner()
    region = tmp_path / "hits-region.png"  # `similar --image --show hits.png` draws its region there
    region.write_bytes(before)
    for args in (
        ["query", "a cat", "--db", str(db), "--show", str(photo)],
        ["similar", "1", "--db", str(db), "--show", str(photo)],
        [
            "similar",
            "--image",
            str(photos / "astronaut.png"),
            "--point",
            "5,5",
            "--db",
            str(db),
            "--show",
            str(tmp_path / "hits.png"),
        ],
        ["segment", str(photos / "astronaut.png"), "--out", str(photo), "--classes", "a,b", *PRESET],
        [
            "segment",
            str(photos / "astronaut.png"),
            "--out",
            str(tmp_path / "l.png"),
            "--overlay",
            str(photo),
            "--classes",
            "a",
            *PRESET,
        ],
    ):
        result = runner.invoke(app, args)
        said = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and "is no picture usesearch wrote" in said, (args, result.output)
    assert photo.read_bytes() == before and region.read_bytes() == before and not (tmp_path / "hits.png").exists()
    assert not written_by_usesearch(photo) and not written_by_usesearch(tmp_path / "nothing.png")
    sheet, labels = tmp_path / "sheet.jpg", tmp_path / "labels.png"
    for _ in range(2):  # its own: replaced
        ok = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(sheet)])
        assert ok.exit_code == 0 and written_by_usesearch(sheet), ok.output
        ok = runner.invoke(
            app, ["segment", str(photos / "astronaut.png"), "--out", str(labels), "--classes", "a,b", *PRESET]
        )
        assert ok.exit_code == 0 and written_by_usesearch(labels), ok.output
    empty = tmp_path / "placeholder.png"  # made by mktemp or touch for the output: nothing to lose
    empty.write_bytes(b"")
    ok = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(empty)])
    assert ok.exit_code == 0 and written_by_usesearch(empty), ok.output
    once = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(tmp_path / "hits.gif")])
    assert once.exit_code == 2 and "name a picture file (.png, .jpg, .webp, .tiff)" in once.output  # no mark: refused
    with Image.open(labels) as written:  # the label map's values untouched by the mark
        assert written.getexif()[SOFTWARE_TAG] == PICTURE_MARK and written.mode in ("L", "P")


def test_a_picture_into_the_demos_folder_is_refused(tmp_path):
    """The demo indexes its photos folder on every run: a sheet or label map written
    there was indexed as a photo by the next demo. A folder holding an index named as
    the demo's alone (`db-b16`, a name anyone may give) is not the demo's."""
    from usesearch.cli.paths import DEMO_SAMPLES

    demo = tmp_path / "demo"
    write_photos(demo / "photos", ("astronaut",))
    for name in DEMO_SAMPLES:
        Image.new("RGB", (8, 8)).save(demo / "photos" / f"{name}.jpg")
    db = demo / "db-tiny"
    index_paths([demo / "photos"], db, IndexOptions(**OPTS))
    runner = CliRunner()
    for out in (demo / "photos" / "new.png", demo / "sheet.png"):
        result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(out)])
        said = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and "lies in the demo" in said, result.output
        assert not out.exists()
    ok = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(db / "sheet.png")])
    assert ok.exit_code == 0, ok.output  # a picture in its index's folder itself, as in any index's
    mine = tmp_path / "mine"
    index_paths([write_photos(mine / "photos", ("coffee",))], mine / "db-b16", IndexOptions(**OPTS))
    ok = runner.invoke(app, ["query", "a cat", "--db", str(db), "--show", str(mine / "sheet.png")])
    assert ok.exit_code == 0 and (mine / "sheet.png").is_file(), ok.output


def test_a_webp_sheet_is_refused_past_what_webp_holds_only(indexed, tmp_path):
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
    assert result.exit_code == 0 and "2 photo(s) could not be read or changed" in result.stderr, result.output
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
