"""Where commands write: an output that cannot be written is refused before any work, a
command never writes into another command's folder (an index, a curated dataset, a
training run, an audit report, the demo), and the photo walk leaves out what usesearch
wrote among the photos."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from usesearch.cli.app import app


@pytest.mark.parametrize(
    "args, why",
    [
        (["segment", "{d}/p.jpg", "--classes", "cat", "--out", "{d}/nowhere/x.png"], "does not exist"),
        (["segment", "{d}/p.jpg", "--classes", "cat", "--out", "{d}/x.jpg"], "write a .png"),
        # A file where a folder of the path should be: said as such, not as a folder that does not exist.
        (["segment", "{d}/p.jpg", "--classes", "cat", "--out", "{d}/p.jpg/x.png"], "is a file, not a folder: write"),
        (["segment", "{d}/p.jpg", "--classes", "cat", "--out", "{d}/x.png", "--overlay", "{d}/o.psd"], "a picture"),
        (["query", "a cat", "--db", "{d}/i", "--show", "{d}/nowhere/s.png"], "does not exist"),
        (["query", "a cat", "--db", "{d}/i", "--show", "{d}/i"], "is a folder: name a picture file"),
        (["query", "a cat", "--db", "{d}/i", "--show", "{d}/sheet.txt"], "name a picture file"),
        (["query", "a cat", "--db", "{d}/i", "--export-coco", "{d}/nowhere/h.json"], "does not exist"),
        (["query", "a cat", "--db", "{d}/i", "--export-coco", "{d}/i"], "is a folder: name a file"),
        # A folder to write that is a file: refused at once, not at the first write after the work.
        (["train", "{d}/i", "--run-dir", "{d}/p.json"], "is a file: name a folder"),
        (["curate", "run", "{d}/i", "--dataset-dir", "{d}/p.json"], "is a file: name a folder"),
        (["eval", "audit", "--coco", "{d}/a.json", "--images", "{d}/i", "--report-dir", "{d}/p.json"], "is a file"),
        (["audit", "--db", "{d}/i", "--report-dir", "{d}/p.json"], "is a file: name a folder"),
        (["demo", "--demo-dir", "{d}/p.json"], "is a file: name a folder"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(files, args, why):
    """Checked as the command starts, not after its models ran: one line, exit 2."""
    result = CliRunner().invoke(app, [a.format(d=files) for a in args] + ["--preset", "tiny"] * (args[0] == "segment"))
    said = " ".join(result.output.replace("│", " ").split())  # typer boxes a usage error over lines
    assert result.exit_code == 2 and why in said and "Traceback" not in said, result.output
    assert not (files / "x.jpg").exists()


@pytest.mark.parametrize(
    "args, why",
    [
        (["index", "{d}/i", "--db", "{d}/dataset"], "holds a curated dataset: give an index a folder of its own"),
        (["index", "{d}/i", "--db", "{d}/run"], "holds a training run: give an index a folder of its own"),
        (["curate", "run", "{d}/i", "--dataset-dir", "{d}/index"], "holds an index: give a curated dataset"),
        (["curate", "run", "{d}/i", "--dataset-dir", "{d}/run"], "holds a training run: give a curated dataset"),
        (["train", "{d}/dataset", "--run-dir", "{d}/dataset"], "holds a curated dataset: give a training run"),
        (["train", "{d}/dataset", "--run-dir", "{d}/index"], "holds an index: give a training run"),
        (
            ["eval", "audit", "--coco", "{d}/a.json", "--images", "{d}/i", "--report-dir", "{d}/index"],
            "an audit report",
        ),
        (["demo", "--demo-dir", "{d}/index"], "holds an index: give the demo a folder of its own"),
        (["index", "{d}/i", "--db", "{d}"], "holds photos (p.jpg): give the index a folder of its own"),
        (["index", "{d}/i", "--db", "{d}/report"], "holds an audit report: give an index a folder of its own"),
        (["index", "{d}/i", "--db", "{d}/lists"], "holds an audit report: give an index a folder of its own"),
        (["train", "{d}/dataset", "--run-dir", "{d}/demo"], "holds the demo: give a training run"),
        # Inside another's folder: its command may walk or replace what it finds there.
        (["train", "{d}/dataset", "--run-dir", "{d}/dataset/run"], "lies in a curated dataset ({d}/dataset), whose"),
        (["curate", "run", "{d}/i", "--dataset-dir", "{d}/index/pairs"], "lies in an index ({d}/index), whose"),
        (["demo", "--demo-dir", "{d}/run/demo"], "lies in a training run ({d}/run), whose files"),
        (  # the folder suggested beside that index ({d}/index/embeddings.use was refused in turn)
            ["index", "{d}/i", "--db", "{d}/index/embeddings"],
            "lies in an index ({d}/index), whose files usesearch writes: give the index a folder of its own, "
            "e.g. {d}/embeddings.use",
        ),
        (["index", "{d}/i", "--db", "{d}/around"], "holds another index ({d}/around/inner): give the index"),
        (["index", "{d}/i", "--db", "{d}/index.use/index"], "of its own, e.g. {d}/index-2.use"),  # not that index
        # Another project's trainer.pt above: no training run of ours, nothing refused below it.
        (["index", "{d}/i", "--db", "{d}/torch-project/photos.use"], "holds photos"),
        (["curate", "run", "{d}/i", "--dataset-dir", "{d}/report"], "holds an audit report: give a curated"),
        # Their pictures among photos: the next index of that folder took them for photos.
        (
            ["eval", "audit", "--coco", "{d}/a.json", "--images", "{d}/i", "--report-dir", "{d}"],
            "holds other files (photos?): give an audit report",
        ),
        (["demo", "--demo-dir", "{d}"], "holds other files (photos?): give the demo a folder of its own"),
    ],
)
def test_a_command_never_writes_into_another_commands_folder(files, args, why):
    """An index, a curated dataset and a training run each keep their own folder: their
    files mixed, each reader would meet the other's (all three were written at exit 0).
    So do audit reports and the demo, and a new index is not made among photos."""
    for name, mark in (
        ("index", "segments.sqlite"),
        ("dataset", "manifest.json"),
        ("run", "trainer.safetensors"),
        ("report", "suspects.csv"),  # eval audit's
        ("lists", "swapped.csv"),  # audit's
        ("demo", "db-tiny"),
        ("around/inner", "segments.sqlite"),  # an index one level down
        ("index.use", "segments.sqlite"),
        ("torch-project", "trainer.pt"),
        ("torch-project/photos.use", "x.jpg"),
    ):
        (files / name).mkdir(parents=True, exist_ok=True)
        (files / name / mark).write_text("{}")
    (files / "dataset" / "shards").mkdir(exist_ok=True)  # (with its manifest: surely a dataset, at any depth)
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    result = CliRunner().invoke(app, [a.format(d=files) for a in args] + ["--preset", "tiny"])
    said = "".join(result.output.replace("│", " ").split())  # (typer's box breaks a long path anywhere)
    assert result.exit_code == 2 and "".join(why.format(d=files).split()) in said, result.output
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before  # nothing written


def test_a_new_index_is_not_made_in_a_folder_it_walks_or_above_one(tmp_path):
    """`index t --db t` with the photos only in t's subfolders wrote the index among
    them (exit 0), and a later `index t --db other` would meet an index's folder and
    skip all of it. The index's own folder inside the walked one is its own."""
    from tests.helpers import write_photos

    photos = write_photos(tmp_path / "t" / "2024", ("coffee",))
    runner = CliRunner()
    for walked, db, why in (
        ("t", "t", "is the folder being indexed"),
        ("t/2024", "t", f"holds {tmp_path / 't' / '2024'}, which is being indexed"),
    ):
        result = runner.invoke(app, ["index", str(tmp_path / walked), "--db", str(tmp_path / db), "--preset", "tiny"])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and why in said, said
        assert f"give the index a folder of its own, e.g. {tmp_path / 't'}.use" in said
    typo = runner.invoke(app, ["index", str(tmp_path / "t" / "2042"), "--db", str(tmp_path / "t"), "--preset", "tiny"])
    assert typo.exit_code == 2 and "no such file or folder" in typo.output  # a typo said as one, first
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["2024"] and len(list(photos.iterdir())) == 1
    inside = runner.invoke(
        app, ["index", str(tmp_path / "t"), "--db", str(tmp_path / "t" / "t.use"), "--preset", "tiny"]
    )
    assert inside.exit_code == 0, inside.output


def test_a_reading_command_at_a_folder_holding_no_index_says_what_it_holds(tmp_path):
    """`query --db DATASET` suggested `usesearch index PATH --db DATASET`, which is then
    refused (a dataset's folder is its own), and `--db usesearch-demo` the same, where
    the demo's index is one folder down. Each now says what the folder is."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "manifest.json").write_text("{}")
    (tmp_path / "demo" / "db-tiny").mkdir(parents=True)
    (tmp_path / "demo" / "db-tiny" / "segments.sqlite").write_bytes(b"")
    for name in ("db-a", "db-b"):  # (the first alone was named, as if it were the only one)
        (tmp_path / "many" / name).mkdir(parents=True)
        (tmp_path / "many" / name / "segments.sqlite").write_bytes(b"")
    (tmp_path / "new").mkdir()
    (tmp_path / "photos").mkdir()  # its suggested `index PHOTOS --db PHOTOS` was refused: the folder being indexed
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    photos = tmp_path / "photos"
    (tmp_path / "my photos").mkdir()  # a command to paste: the path quoted as a shell reads it
    (tmp_path / "my photos" / "cat.jpg").write_bytes(b"")
    spaced = tmp_path / "my photos"
    demo = tmp_path / "demo" / "db-tiny"
    (demo / "embeddings").mkdir()
    for folder, why in (
        (
            "photos",
            f"it holds photos (cat.jpg): give --db the index's folder (`usesearch index {photos} --db {photos}.use`",
        ),
        (
            "my photos",
            f"it holds photos (cat.jpg): give --db the index's folder (`usesearch index '{spaced}' --db "
            f"'{spaced}.use'` makes one)",
        ),
        ("dataset", "it holds a curated dataset: give --db an index's folder"),
        ("demo", f"the index in it is {tmp_path / 'demo' / 'db-tiny'}: give --db {tmp_path / 'demo' / 'db-tiny'}"),
        ("many", f"it holds 2 indexes ({tmp_path / 'many' / 'db-a'}, {tmp_path / 'many' / 'db-b'}): give --db the"),
        ("new", f"run `usesearch index PATH --db {tmp_path / 'new'}` first"),
        # An index's own folder: `index --db` of it, suggested, was refused as lying in an index.
        ("demo/db-tiny/embeddings", f"it lies in an index ({demo}): give --db {demo}"),
    ):
        for command in (["info"], ["query", "a cat"]):
            result = CliRunner().invoke(app, [*command, "--db", str(tmp_path / folder)])
            said = " ".join(result.output.split())
            assert result.exit_code == 2 and f"no index at {tmp_path / folder} (no segments.sqlite); {why}" in said, (
                said
            )


def test_an_audit_report_inside_an_index_is_only_that_indexs_own_audit(tmp_path):
    """`eval audit --report-dir DB/audit/report` wrote another dataset's suspects among
    index DB's own lists (and `audit --db A` into index B's folder the same): refused
    in one line before anything loads; `audit --db DB` writes its report there."""
    from usesearch.cli.paths import refuse_report_in_an_index

    for name in ("a", "b"):
        (tmp_path / name / "audit" / "report").mkdir(parents=True)
        (tmp_path / name / "segments.sqlite").write_bytes(b"")
    (tmp_path / "i").mkdir()
    (tmp_path / "x.json").write_text("{}")
    eval_audit = ["eval", "audit", "--coco", str(tmp_path / "x.json"), "--images", str(tmp_path / "i"), "--preset"]
    for args in (
        [*eval_audit, "tiny", "--report-dir", str(tmp_path / "a" / "audit" / "report")],
        [*eval_audit, "tiny", "--report-dir", str(tmp_path / "a" / "new")],
        ["audit", "--db", str(tmp_path / "a"), "--report-dir", str(tmp_path / "b" / "audit" / "report")],
    ):
        result = CliRunner().invoke(app, args)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "lies in an index" in said and "give the report a folder of its own" in said
    assert not (tmp_path / "a" / "new").exists() and not list((tmp_path / "b" / "audit" / "report").iterdir())
    refuse_report_in_an_index(tmp_path / "a" / "audit" / "report", audited=tmp_path / "a")  # its own: no error
    refuse_report_in_an_index(tmp_path / "elsewhere")


def test_an_audit_report_replaces_only_a_reports_files(files):
    """Any file named report.html, suspects.csv or LIST.csv made a folder pass for an
    audit report: a user's web site had its report.html replaced (and a leaks.csv of
    theirs, and LIST.png deleted), its photos left among the sheets. A report folder
    is now one holding the mark a report writes first, or (written before the mark)
    nothing but a report's files."""
    from usesearch.cli.paths import refuse_other_kind
    from usesearch.errors import UsesearchError
    from usesearch.io.own_folders import mark_audit_report

    def folder(name: str, *held: str) -> Path:
        (files / name).mkdir()
        for file in held:
            (files / name / file).write_text("the user's")
        return files / name

    site, theirs = folder("site", "report.html", "holiday.png"), folder("theirs", "leaks.csv", "notes.txt")
    for mine in (site, theirs, folder("alone", "report.html"), folder("one", "outliers.png")):
        with pytest.raises(UsesearchError, match="holds other files"):
            refuse_other_kind(mine, "an audit report")
    older = folder("older", "swapped.csv", "swapped.json", "swapped.png", "report.html")
    # What a desktop leaves there, and a killed write's temporary file, keep it a report's.
    browsed = folder("browsed", "leaks.csv", "leaks.json", ".DS_Store", "Thumbs.db", ".leaks.csv.4242.tmp")
    added = folder("added", "leaks.csv", "leaks.json", "holiday.jpg")
    with pytest.raises(UsesearchError, match=r"holds an earlier audit report and 1 other file\(s\) \(holiday.jpg\)"):
        refuse_other_kind(added, "an audit report")
    marked = folder("marked", "a note of the user's.txt")
    mark_audit_report(marked)
    for report in (older, browsed, marked, folder("empty")):
        refuse_other_kind(report, "an audit report")  # a report's own folder (or an empty one): written into
    args = ["eval", "audit", "--coco", str(files / "a.json"), "--images", str(files / "i"), "--report-dir", str(site)]
    result = CliRunner().invoke(app, [*args, "--preset", "tiny"])
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "holds other files" in said, result.output
    assert sorted(p.name for p in site.iterdir()) == ["holiday.png", "report.html"]
    assert (site / "report.html").read_text() == "the user's"


def test_every_list_an_audit_writes_marks_its_folder():
    from usesearch.cli.paths import FOLDER_MARKS
    from usesearch.indexer.audit.report import CSV_COLUMNS

    assert {f"{kind}.csv" for kind in CSV_COLUMNS} <= set(FOLDER_MARKS["an audit report"])


def test_an_indexs_folder_marks_are_the_names_the_indexer_writes():
    from usesearch.cli.paths import FOLDER_MARKS
    from usesearch.indexer.embeddings import FOLDER as EMBEDDINGS
    from usesearch.indexer.folder import DB_FILE, FAISS_FILE

    assert set(FOLDER_MARKS["an index"]) == {DB_FILE, FAISS_FILE, EMBEDDINGS}


def test_the_photo_walk_leaves_out_what_usesearch_wrote_among_the_photos(tmp_path, caplog):
    """An index made inside its photo folder, with a contact sheet saved into it, and an
    audit's lists there: the next ``index`` of the folder took their pictures for
    photos. They are left out, said once each; a folder that merely holds a
    ``manifest.json`` is a photo folder; a folder named by the caller is walked."""
    from PIL import Image

    from usesearch.io.files import walk

    for folder, marks in (
        ("idx", ["segments.sqlite"]),
        ("lists", ["swapped.csv", "swapped.json"]),
        ("mine", ["manifest.json"]),
    ):
        (tmp_path / folder).mkdir()
        for mark in marks:
            (tmp_path / folder / mark).write_text("{}")
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "sheet.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    (tmp_path / "idx" / "trip").mkdir()  # an index made at the top of a photo tree: the tree is still walked
    Image.new("RGB", (8, 8)).save(tmp_path / "idx" / "trip" / "beach.png")
    found = [os.path.relpath(f.path, tmp_path) for f in walk([tmp_path])]
    assert found == ["idx/trip/beach.png", "mine/sheet.png", "photo.png"]
    assert sum("holds an index, not photos: its pictures left out" in r.getMessage() for r in caplog.records) == 1
    assert sum("holds an audit report, not photos: its files left out" in r.getMessage() for r in caplog.records) == 1
    assert [os.path.basename(f.path) for f in walk([tmp_path / "idx"])] == ["sheet.png", "beach.png"]  # named


def test_a_picture_usesearch_wrote_among_photos_is_not_indexed_as_one(tmp_path):
    """`segment --out` and `curate show --out` know no index: their pictures written
    into a photo folder were indexed as photos by its next run (their mark unread)."""
    from tests.helpers import write_photos

    photos = write_photos(tmp_path / "photos", ("coffee",))
    runner = CliRunner()
    made = runner.invoke(
        app,
        [
            "segment",
            str(photos / "coffee.png"),
            "--classes",
            "cup",
            "--out",
            str(photos / "lab.png"),
            "--preset",
            "tiny",
        ],
    )
    assert made.exit_code == 0 and (photos / "lab.png").is_file(), made.output
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny"]
    first = runner.invoke(app, args)
    said = " ".join(first.output.split())
    assert first.exit_code == 0 and "1 image indexed, 0 skipped, 1 failed" in said, said
    assert "lab.png: ImageReadError: cannot index" in said and "a picture usesearch wrote" in said
    again = " ".join(runner.invoke(app, args).output.split())
    assert "0 images indexed, 2 skipped, 0 failed" in again, again  # recorded: not read again


def test_a_search_while_a_new_index_is_being_made_says_so(tmp_path):
    """In an index run's first seconds (its models load before its catalog is made), a
    search said "no index ... run `usesearch index PATH --db DB` first"."""
    import subprocess

    (tmp_path / "db").mkdir()
    import sys

    indexer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # the lock's live holder
    try:
        (tmp_path / "db" / "writer.lock").write_text(str(indexer.pid))
        result = CliRunner().invoke(app, ["query", "a cat", "--db", str(tmp_path / "db")])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"an indexer (pid {indexer.pid}) is making one there now" in said, said
    finally:
        indexer.kill()
        indexer.wait()
    after = " ".join(CliRunner().invoke(app, ["info", "--db", str(tmp_path / "db")]).output.split())
    assert "run `usesearch index PATH --db" in after, after  # its holder gone: a lock left, no index
    other = subprocess.Popen(["sleep", "30"])  # its pid reused by another program: no indexer
    try:
        (tmp_path / "db" / "writer.lock").write_text(str(other.pid))
        said = " ".join(CliRunner().invoke(app, ["info", "--db", str(tmp_path / "db")]).output.split())
        assert "run `usesearch index PATH --db" in said, said
    finally:
        other.kill()
        other.wait()
