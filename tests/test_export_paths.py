"""Where a contact sheet, label map or COCO file may be written: never over an indexed
photo, the other output, a file of any folder usesearch writes, a picture usesearch did
not write, nor among indexed photos or in the demo's folder (its own pictures it
replaces)."""

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from tests.test_export import index_two_photos
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, index_paths
from usesearch.io.atomic import save_picture

PRESET = ["--preset", "tiny", "--masker", "felzenszwalb"]  # (segment's models: tiny, and no SAM to build)


@pytest.fixture
def indexed(tmp_path):
    return index_two_photos(tmp_path)


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
    said = " ".join(once.output.replace("│", " ").split())  # (boxed, wrapped where the path's length puts it)
    assert once.exit_code == 2 and "name a picture file (.png, .jpg, .webp, .tiff)" in said  # no mark: refused
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


def test_an_export_never_replaces_a_file_usesearch_did_not_write_and_replaces_its_own(indexed, tmp_path):
    """`--export-coco val.json` replaced the COCO file the index was built from, as any
    other JSON or text file given there, saying "wrote val.json"."""
    _, db = indexed
    theirs, ours, empty = tmp_path / "val.json", tmp_path / "hits.json", tmp_path / "empty.json"
    theirs.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}')
    empty.write_bytes(b"")
    query = ["query", "a cat", "--db", str(db), "-k", "2", "--export-coco"]
    refused = CliRunner().invoke(app, [*query, str(theirs)])
    assert refused.exit_code == 2 and "exists and is no export usesearch wrote" in refused.output, refused.output
    assert theirs.read_text().startswith('{"images": []')
    for path in (ours, ours, empty):  # a new file, then its own export again; an empty file
        result = CliRunner().invoke(app, [*query, str(path)])
        assert result.exit_code == 0 and path.stat().st_size > 0, result.output
