"""One spelling per concept across commands; old spellings still work for one
release, with a deprecation message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import parsed
from usesearch.cli.app import app, given_twice, with_ray_address


@pytest.fixture
def files(tmp_path):
    """The files the spellings below name (their options check that they exist)."""
    from PIL import Image

    for name in ("a.json", "p.json", "m.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "i").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "p.jpg")
    return tmp_path


RENAMED = [
    (
        ["audit", "--coco", "a.json", "--images", "i", "--top", "5"],
        ["eval", "audit", "--coco", "a.json", "--images", "i", "-k", "5"],
    ),
    (
        ["embed", "p.jpg", "-t", "a cat", "--text", "a dog", "--top", "2"],
        ["embed", "p.jpg", "-k", "2", "a cat", "a dog"],
    ),
    (["demo", "--query", "a cup"], ["demo", "a cup"]),
    (["demo", "--out", "d"], ["demo", "--demo-dir", "d"]),
    (
        ["eval", "parts", "--coco-json", "p.json", "--images", "i"],
        ["eval", "parts", "--coco", "p.json", "--images", "i"],
    ),
    (
        ["index", "photos", "--db", "d", "--masker", "coco", "--masks", "m.json"],
        ["index", "photos", "--db", "d", "--masker", "coco", "--coco", "m.json"],
    ),
    (
        ["index", "p", "--db", "d", "--stability-thresh", "0.5", "--crop-layers", "1", "--min-region-area", "9"],
        [
            "index",
            "p",
            "--db",
            "d",
            "--stability-score-thresh",
            "0.5",
            "--crop-n-layers",
            "1",
            "--min-mask-region-area",
            "9",
        ],
    ),
    (["reindex", "--db", "d", "--device", "cpu"], ["reindex", "--db", "d", "--faiss-device", "cpu"]),
    (["train", "i", "--out", "r"], ["train", "i", "--run-dir", "r"]),
    (["curate", "run", "i", "--out", "ds"], ["curate", "run", "i", "--dataset-dir", "ds"]),
    (
        ["curate", "run", "a.json", "--dataset-dir", "ds", "--source", "vg", "--images", "i"],
        ["curate", "run", "a.json", "--dataset-dir", "ds", "--input-format", "vg", "--images", "i"],
    ),
    (
        ["eval", "audit", "--coco", "a.json", "--images", "i", "--out", "r"],
        ["eval", "audit", "--coco", "a.json", "--images", "i", "--report-dir", "r"],
    ),
]


@pytest.mark.parametrize("old,new", RENAMED, ids=[" ".join(old) for old, _ in RENAMED])
def test_an_old_spelling_means_what_the_new_one_does(old, new, files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    assert parsed(new) == parsed(old)
    notes = capsys.readouterr().err.splitlines()
    assert notes and all(
        n.startswith("deprecated: ") and n.endswith("the old spelling goes in the next release") for n in notes
    )


@pytest.mark.parametrize(
    "both",
    [
        ["embed", "p.jpg", "cat", "-t", "dog"],
        ["embed", "p.jpg", "-t", "dog", "cat"],
        ["train", "i", "--out", "r", "--run-dir", "s"],
    ],
)
def test_an_old_spelling_beside_its_new_one_is_refused_not_dropped(both, files, monkeypatch):
    """Given both ways, one value was dropped without a word (``embed IMAGE cat -t dog``
    ranked 'cat' alone)."""
    monkeypatch.chdir(files)
    result = CliRunner().invoke(app, both)
    said = " ".join(result.output.replace("│", " ").split())  # (click's box wraps it here; `usesearch` says one line)
    assert result.exit_code == 2 and "is the old spelling of" in said and "give one of them, not both" in said, said


def test_todays_spellings_say_nothing(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    for current in (
        ["eval", "semseg", "--images", "i", "--labels", "i", "--classes", "sky,tree", "--json"],
        ["query", "a cat", "--db", "d", "-k", "3", "--json"],
        ["index", "p", "--db", "d", "--device", "cpu"],
    ):
        parsed(current)
    assert capsys.readouterr().err == ""


def test_the_old_audit_command_says_what_replaced_it(files):
    result = CliRunner().invoke(
        app, ["audit", "--coco", str(files / "a.json"), "--images", str(files / "i"), "-p", "nope"]
    )
    assert result.exit_code == 2 and "deprecated: `usesearch audit` is now `usesearch eval audit`" in result.stderr


def test_old_eval_spellings_give_the_same_result(tmp_path):
    """`eval semseg --classes FILE` (now --classes-file) and `eval ... --json FILE` (now --out)."""
    from usesearch.training.synthetic import write_parts_coco, write_semseg

    root = write_semseg(tmp_path / "semseg", 1, seed=4)
    semseg = ["eval", "semseg", "--images", str(root / "images"), "--labels", str(root / "labels"), "-p", "tiny"]
    parts_json = write_parts_coco(tmp_path / "parts", 1, seed=5)
    parts = ["eval", "parts", "--images", str(tmp_path / "parts" / "images"), "-p", "tiny"]
    runner = CliRunner()
    for old, new, note in (
        (
            [*semseg, "--classes", str(root / "classes.txt"), "--json", str(tmp_path / "old.json")],
            [*semseg, "--classes-file", str(root / "classes.txt"), "--out", str(tmp_path / "new.json")],
            "`eval semseg --classes FILE` is now `--classes-file FILE`",
        ),
        (
            [*parts, "--coco-json", str(parts_json), "--json", str(tmp_path / "old.json")],
            [*parts, "--coco", str(parts_json), "--out", str(tmp_path / "new.json")],
            "`eval ... --json FILE` is now `--out FILE`",
        ),
    ):
        was, now = runner.invoke(app, old), runner.invoke(app, new)
        assert was.exit_code == now.exit_code == 0, (was.output, now.output)
        assert was.stdout == now.stdout and note in was.stderr and now.stderr == ""
        assert json.loads((tmp_path / "old.json").read_text()) == json.loads((tmp_path / "new.json").read_text())
    nowhere = runner.invoke(app, [*semseg, "--classes-file", str(root / "classes.txt"), "--json", "nodir/r.json"])
    assert nowhere.exit_code == 2 and "--json nodir/r.json: folder nodir does not exist" in nowhere.stderr


def test_a_bare_ray_means_this_machine():
    assert with_ray_address(["index", "p", "--db", "d", "--ray"]) == ["index", "p", "--db", "d", "--ray", "local"]
    assert with_ray_address(["index", "--ray", "p", "--db", "d"]) == ["index", "--ray", "local", "p", "--db", "d"]
    assert with_ray_address(["index", "--ray", "10.0.0.1:6379", "p"]) == ["index", "--ray", "10.0.0.1:6379", "p"]


def test_an_option_of_one_value_given_twice_is_refused_not_half_kept():
    """Click keeps the last value: `index --coco train.json --coco val.json` indexed val
    alone, and said nothing of train."""
    said = given_twice(["index", "p", "--coco", "a.json", "--db", "d", "--coco", "b.json"])
    assert said == "--coco is given twice, and it takes one value: run the command once for each"
    assert given_twice(["query", "a cat", "--db=d", "--db", "e"]).startswith("--db is given twice")
    assert given_twice(["eval", "semseg", "--head", "a", "--head", "b"]) is None  # several heads are averaged
    assert given_twice(["query", "a cat", "--json", "--json", "--db", "d"]) is None  # a flag, not a value
    assert given_twice(["query", "--", "--db", "--db"]) is None  # words after --, not options
    assert given_twice(["nosuch", "--db", "a", "--db", "b"]) is None  # click's to say
    assert given_twice(["index", "p", "--coco-json", "a.json", "--masks", "b.json"]).startswith("--coco-json is given")
    assert given_twice(["audit", "--coco", "a.json", "--images", "p", "--coco", "b.json"]) is not None  # old audit
    assert given_twice(["audit", "--db", "d", "-k", "3"]) is None


def test_the_installed_entry_point_accepts_an_old_spelling(tmp_path):
    from PIL import Image
    from skimage import data

    image = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()[::8, ::8]).save(image)
    done = subprocess.run(
        [sys.executable, "-m", "usesearch", "embed", str(image), "-t", "a cat", "--preset", "tiny", "-k", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated: `embed -t TEXT` is now `embed IMAGE TEXT...`" in done.stderr and "a cat" in done.stdout


def test_a_command_line_click_cannot_parse_is_one_line(tmp_path):
    """An unknown flag, a missing argument, a value of the wrong kind: one line on
    stderr naming the command's help, exit 2, as every other failure."""
    cases = [
        (["query", "--bogus"], "No such option: --bogus (see `usesearch query --help`)"),
        (["index"], "Missing argument 'paths'. (see `usesearch index --help`)"),
        (["query", "a cat", "--db", str(tmp_path), "-k", "many"], "Invalid value for '-k'"),
        (["nosuch"], "No such command 'nosuch'. (see `usesearch --help`)"),
        (["index", "p", "--coco", "a.json", "--coco", "b.json"], "--coco is given twice, and it takes one value"),
    ]
    for args, why in cases:
        done = subprocess.run([sys.executable, "-m", "usesearch", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == "", (args, done.stdout)
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and why in done.stderr, (args, done.stderr)
    helped = subprocess.run([sys.executable, "-m", "usesearch", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "Usage: usesearch" in helped.stdout
    bare = subprocess.run([sys.executable, "-m", "usesearch", "curate"], capture_output=True, text=True, timeout=120)
    assert (
        "Usage: usesearch curate" in bare.stdout + bare.stderr and "error:" not in bare.stderr
    )  # help, no empty error


@pytest.mark.parametrize(
    "option, value, why",
    [
        ("--recall-target", "nan", "'nan': give a number from 0 to 1"),
        ("--recall-target", "1.5", "'1.5': give a number from 0 to 1"),
        ("--recall-target", "-0.1", "'-0.1': give a number from 0 to 1"),
        ("--latency-budget", "nan", "'nan': give a number from 0 to 60000"),
        ("--latency-budget", "inf", "'inf': give a number from 0 to 60000"),
        ("--latency-budget", "60001", "'60001': give a number from 0 to 60000"),
        ("--latency-budget", "fast", "'fast': give a number from 0 to 60000"),
    ],
)
def test_a_number_option_refuses_nan_infinity_and_its_range_in_one_line(option, value, why, tmp_path):
    """Click's range lets nan through; a calibration asked for a nan target or budget
    would compare nothing and choose at random."""
    result = CliRunner().invoke(app, ["calibrate", "--db", str(tmp_path / "none"), option, value])
    assert result.exit_code == 2 and why in result.output, result.output
    assert not (tmp_path / "none").exists()
    from usesearch.cli.options import number_from

    assert number_from(0.0, 1.0)("0.5") == 0.5 and number_from(0.0, 1.0)("1") == 1.0


@pytest.mark.parametrize(
    "command, option, value, why",
    [
        ("index", "--stability-score-thresh", "nan", "'nan': give a number up to 1"),
        ("index", "--pred-iou-thresh", "2", "'2': give a number up to 1"),
        ("index", "--box-nms-thresh", "-1", "'-1': give a number from 0 to 1"),
        ("index", "--points-per-side", "100000", "less than or equal to 512"),
        ("index", "--crop-n-layers", "10", "less than or equal to 5"),
        ("segment", "--stability-score-thresh", "inf", "'inf': give a number up to 1"),
        ("curate", "--pred-iou-thresh", "3", "'3': give a number up to 1"),
    ],
)
def test_sams_settings_refuse_nan_and_values_no_photo_could_use(command, option, value, why, tmp_path):
    """A NaN threshold was recorded with the index, and since NaN never equals itself no
    later run, the same command included, could resume it; a threshold above 1 kept no
    mask of any photo, recorded as done (below 0 keeps every mask: random weights' way,
    taken); a huge grid or crop depth failed every photo. Each is refused in one line
    before anything is made."""
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"")
    args = {
        "index": ["index", str(photo), "--db", str(tmp_path / "db"), "--masker", "sam"],
        "segment": ["segment", str(photo), "--classes", "cat", "--out", str(tmp_path / "l.png"), "--masker", "sam"],
        "curate": ["curate", "run", str(tmp_path), "--input-format", "folder", "--dataset-dir", str(tmp_path / "db")],
    }[command]
    result = CliRunner().invoke(app, [*args, option, value] + (["--preset", "tiny"] if command != "curate" else []))
    said = " ".join(result.output.replace("│", " ").split())  # Rich's error box wraps the line
    assert result.exit_code == 2 and why in said, result.output
    assert not (tmp_path / "db").exists() and not (tmp_path / "l.png").exists()


@pytest.mark.parametrize(
    "args, why",
    [
        (["segment", "{d}/p.jpg", "--classes", "cat", "--out", "{d}/nowhere/x.png"], "does not exist"),
        (["segment", "{d}/p.jpg", "--classes", "cat", "--out", "{d}/x.jpg"], "write a .png"),
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
    ):
        (files / name).mkdir(exist_ok=True)
        (files / name / mark).write_text("{}")
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    result = CliRunner().invoke(app, [a.format(d=files) for a in args] + ["--preset", "tiny"])
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and why in said, result.output
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before  # nothing written


def test_a_reading_command_at_a_folder_holding_no_index_says_what_it_holds(tmp_path):
    """`query --db DATASET` suggested `usesearch index PATH --db DATASET`, which is then
    refused (a dataset's folder is its own), and `--db usesearch-demo` the same, where
    the demo's index is one folder down. Each now says what the folder is."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "manifest.json").write_text("{}")
    (tmp_path / "demo" / "db-tiny").mkdir(parents=True)
    (tmp_path / "demo" / "db-tiny" / "segments.sqlite").write_bytes(b"")
    (tmp_path / "new").mkdir()
    for folder, why in (
        ("dataset", "it holds a curated dataset: give --db an index's folder"),
        ("demo", f"the index in it is {tmp_path / 'demo' / 'db-tiny'}: give --db {tmp_path / 'demo' / 'db-tiny'}"),
        ("new", f"run `usesearch index PATH --db {tmp_path / 'new'}` first"),
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


def test_inputs_that_are_not_what_they_say_are_one_line(files):
    """A folder that is not a curated dataset, and a class file with no names or not
    text, each said in one line naming it."""
    (files / "empty.txt").write_text("\n\n")
    cases = [
        (["train", str(files / "i"), "--run-dir", str(files / "run")], "is not a curated dataset (no manifest.json)"),
        (
            [
                "segment",
                str(files / "p.jpg"),
                "--classes-file",
                str(files / "empty.txt"),
                "--out",
                str(files / "o.png"),
            ],
            "holds no class name",
        ),
        (
            ["segment", str(files / "p.jpg"), "--classes-file", str(files / "p.jpg"), "--out", str(files / "o.png")],
            "cannot read it as text",
        ),
    ]
    cases = [([*args, "--preset", "tiny"], why) for args, why in cases]
    unfinished = files / "unfinished"
    (unfinished / "shards").mkdir(parents=True)
    (unfinished / "shards" / "shard-00000.jsonl").write_text("")  # a curation killed before its manifest
    for folder, why in [(files / "i", "is not a curated dataset"), (unfinished, "is an unfinished curation")]:
        cases += [
            (["curate", "stats", str(folder)], why),
            (["curate", "show", str(folder), "p.jpg", "--out", str(files / "s.png")], why),
            (["train", str(folder), "--run-dir", str(files / "run"), "--preset", "tiny"], why),
        ]
    for args, why in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and why in result.output and len(result.output.strip().splitlines()) == 1, args


def test_index_json_is_its_report_alone_on_stdout(tmp_path):
    """A script reads the run's counts from stdout; the status lines go to stderr."""
    from tests.helpers import write_photos
    from tests.test_coco_index import write_coco

    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    coco = write_coco(tmp_path / "c.json", photos, ["coffee.png", "sub/chelsea.png"], 2)
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--json"]
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0, plain.output
    report = json.loads(plain.stdout)
    assert set(report) == {"proposals"} and report["proposals"]["done"] == 2 and report["proposals"]["segments"] > 0
    labelled = CliRunner().invoke(app, [*args, "--coco", str(coco)])
    assert labelled.exit_code == 0, labelled.output
    report = json.loads(labelled.stdout)
    assert set(report) == {"annotations"} and report["annotations"]["segments"] == 4


def test_a_run_where_every_photo_failed_exits_3_and_one_with_any_photo_done_exits_0(tmp_path):
    """A script must not read "every photo failed" as success; failures beside finished
    work are recorded and the run is a success, as before."""
    from tests.helpers import write_photos

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.jpg", "b.png"):
        (broken / name).write_bytes(b"not a photo: " + name.encode())
    db = tmp_path / "db"
    args = ["index", str(broken), "--db", str(db), "--preset", "tiny", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "every photo failed (2); nothing is indexed" in result.stderr
    assert json.loads(result.stdout)["proposals"]["failed"] == 2  # the report is printed all the same
    rerun = CliRunner().invoke(app, args)  # the failures skipped unread: still nothing indexed, said and exit 3
    assert rerun.exit_code == 3 and "every photo failed (2)" in rerun.stderr, rerun.output
    said = " ".join(rerun.stderr.split())
    assert "2 of those skipped failed in an earlier run" in said and "--retry-failed" in said
    assert json.loads(rerun.stdout)["proposals"]["failed_before"] == 2
    write_photos(broken, ("coffee",))
    mixed = CliRunner().invoke(app, [*args, "--retry-failed"])
    assert mixed.exit_code == 0, mixed.output
    assert json.loads(mixed.stdout)["proposals"]["done"] == 1
    again = CliRunner().invoke(app, [*args, "--retry-failed"])  # a whole index, its bad files failing again
    assert again.exit_code == 0 and json.loads(again.stdout)["proposals"]["skipped"] == 1, again.output
    (tmp_path / "empty").mkdir()  # no photo at all: refused before any model or index folder
    empty = CliRunner().invoke(
        app, ["index", str(tmp_path / "empty"), "--db", str(tmp_path / "db2"), "--preset", "tiny"]
    )
    assert empty.exit_code == 2 and "no photo under" in empty.stderr and not (tmp_path / "db2").exists()
    (broken / "coffee.png").unlink()
    curate = ["curate", "run", str(broken), "--dataset-dir", str(tmp_path / "ds"), "--preset", "tiny"]
    curated = CliRunner().invoke(app, [*curate, "--captioner", "tiny", "--grounder", "tiny"])
    assert curated.exit_code == 3 and "every photo failed (2); nothing is curated" in curated.stderr, curated.output


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(tmp_path):
    """`usesearch query ... --json | head`: the closed pipe was "error: [Errno 32] Broken
    pipe" (exit 2), or Python's own "Exception ignored" lines at exit."""
    big_output = (
        "import json, sys; dumps = json.dumps; json.dumps = lambda *a, **k: dumps(*a, **k) * 2000; "
        "sys.argv = ['usesearch', 'models', 'list', '--json']; from usesearch.cli.app import main; main()"
    )
    child = subprocess.Popen([sys.executable, "-c", big_output], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.read(10)
    child.stdout.close()
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 1 and stderr == b"", stderr


def test_segment_refuses_a_fifo_and_masker_coco_before_models_load_and_reads_a_bom(files, monkeypatch):
    """A FIFO named as the photo hung `segment` for ever (plain Image.open); --masker coco
    asked for a --coco that segment has not; a BOM became part of the first class name."""
    import json
    import os

    from usesearch.cli.eval import Segmenter

    monkeypatch.setattr(Segmenter, "build", lambda self, sam: pytest.fail("models loaded"))
    os.mkfifo(files / "fifo.png")
    base = ["segment", "--classes", "cat,dog", "--out", str(files / "o.png"), "--preset", "tiny"]
    fifo = CliRunner().invoke(app, [*base, str(files / "fifo.png")])
    assert fifo.exit_code == 2 and "not a regular file" in fifo.output, fifo.output
    coco = CliRunner().invoke(app, [*base, str(files / "p.jpg"), "--masker", "coco"])
    assert coco.exit_code == 2 and "here use sam, sam2 or felzenszwalb" in coco.output, coco.output
    monkeypatch.undo()
    (files / "bom.txt").write_bytes("\ufeffperson\nsky\n".encode())
    from usesearch.cli.eval import _classes

    assert _classes(None, files / "bom.txt") == ["person", "sky"]
    args = ["segment", str(files / "p.jpg"), "--classes-file", str(files / "bom.txt"), "--out", str(files / "o.png")]
    done = CliRunner().invoke(app, [*args, "--preset", "tiny", "--json"])
    assert done.exit_code == 0, done.output
    assert {c["class"] for c in json.loads(done.stdout)["classes"]} <= {"person", "sky"}
    assert json.loads(done.stdout)["classes"]  # some class was found, and none is "\ufeffperson"


def test_embed_refuses_a_fifo_named_as_its_image_at_once(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    result = CliRunner().invoke(app, ["embed", str(fifo), "a cat", "--preset", "tiny"])
    assert result.exit_code == 2 and "not a regular file" in result.stderr


def test_the_command_line_starts_without_importing_torch():
    """`usesearch --help` and a mistyped flag answer in a fraction of a second: torch
    (over a second to import) loads only in the commands that run a model."""
    code = (
        "import sys, usesearch.cli.app; print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_commands_that_run_no_model_import_none(tmp_path):
    """`info`, `failures`, `prune`, `reindex` and `similar SEGMENT_ID` read the catalog and
    the vectors only: they imported torch, segment_anything and open_clip all the same
    (~4 s and ~800 MB a call on 2 cores, as much for a typo in --db, also `serve`'s and
    `audit`'s, or in `index`'s paths). A query, which builds CLIP, imports no transformers."""
    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, index_paths

    index_paths([write_photos(tmp_path / "photos", ("astronaut",))], tmp_path / "db", IndexOptions(**OPTS))
    commands = [
        ["info"],
        ["failures"],
        ["prune"],
        ["reindex"],
        ["similar", "1"],
        ["query", "a cat", "--db", "/nowhere"],
        ["serve", "--db", "/nowhere"],
        ["audit", "--db", "/nowhere"],
        ["index", str(tmp_path / "fotos"), "--db", str(tmp_path / "new")],  # a typo in its photos
    ]
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from usesearch.cli.app import app\n"
        "out = []\n"
        "for args in json.loads(sys.argv[2]):\n"
        "    args = args if '--db' in args else [*args, '--db', sys.argv[1]]\n"
        "    done = CliRunner().invoke(app, args)\n"
        "    heavy = [m for m in ('torch', 'segment_anything', 'open_clip', 'timm') if m in sys.modules]\n"
        "    out.append([args[0], done.exit_code, heavy])\n"
        "done = CliRunner().invoke(app, ['query', 'a cat', '--db', sys.argv[1], '-k', '2'])\n"
        "out.append(['query', done.exit_code, 'transformers' in sys.modules])\n"
        "import transformers\n"
        "hub_towers = sys.modules['open_clip'].hf_model.transformers\n"
        "out.append(['transformers', hasattr(transformers, 'AutoConfig'), hub_towers])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "db"), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ran = json.loads(done.stdout)
    # A query builds CLIP, without transformers (open_clip imports it for hub text towers
    # no preset uses: 1.6 s of each process's start), which is importable after it all the same.
    ran, query, after = ran[:-2], ran[-2], ran[-1]
    assert query == ["query", 0, False] and after == ["transformers", True, None], (query, after)
    assert [name for name, _, _ in ran] == [c[0] for c in commands]
    assert [code for _, code, _ in ran] == [0] * 5 + [2] * 4  # each ran (the last four: no index, no photos)
    assert all(heavy == [] for _, _, heavy in ran), ran
    assert not (tmp_path / "new").exists()  # the typo left no index folder


def test_a_ctrl_c_no_command_handled_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C before `index` reached its loop exited 130 saying nothing; one that psycopg's
    clean-up replaced by its own error said "database: can't change 'autocommit' now",
    exit 2; one while the CLI's libraries load printed a traceback through their imports."""
    import sys

    from sqlalchemy.exc import OperationalError

    import usesearch.__main__ as entry
    from tests.helpers import write_photos
    from usesearch.indexer import pipeline

    def cleanup_replaced_it(options):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise OperationalError("SET", {}, Exception("can't change 'autocommit' now")) from None

    def interrupted(options):
        raise KeyboardInterrupt

    photos = write_photos(tmp_path / "photos", ("coffee",))
    for load_models in (interrupted, cleanup_replaced_it):
        monkeypatch.setattr(pipeline, "load_models", load_models)
        result = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny"])
        assert result.exit_code == 130 and result.output.strip() == "interrupted", result.output

    class Loading:  # the CLI's modules, interrupted while they import
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "usesearch.cli.app", Loading())
    with pytest.raises(SystemExit) as ended:
        entry.main()
    assert ended.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"
    monkeypatch.undo()

    # Loaded, then interrupted while it reads the command line (a Ctrl-C in the first
    # ~0.2 s printed a traceback from `given_twice` or Typer building its commands).
    import usesearch.cli.app as cli_app

    monkeypatch.setattr(cli_app, "given_twice", interrupted)
    monkeypatch.setattr(sys, "argv", ["usesearch", "info", "--db", str(tmp_path / "db")])
    with pytest.raises(SystemExit) as ended:
        entry.main()
    assert ended.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_the_demo_runs_given_its_old_spellings(tmp_path, monkeypatch):
    """``demo`` runs ``index`` and ``query`` as commands of their own, which share its
    context's record of the old flags given: they looked up a parameter they do not
    have and the demo ended in 'unexpected AttributeError'."""
    from PIL import Image
    from skimage import data

    import usesearch.cli.search as search_commands

    def two_photos(folder):
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("chelsea", "coffee"):
            Image.fromarray(getattr(data, name)()[::4, ::4]).save(folder / f"{name}.png")
        return folder

    monkeypatch.setattr(search_commands, "_write_sample_photos", two_photos)
    result = CliRunner().invoke(app, ["demo", "--query", "a cup", "--out", str(tmp_path / "d"), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert "coffee.png" in result.output and "Browse these segments" in result.output


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


@pytest.mark.parametrize("command", [["info"], ["query", "a cat"], ["failures"]])
def test_a_damaged_catalog_is_named_with_what_to_do(tmp_path, command):
    """SQLite's "file is not a database" alone named neither the file nor a way out."""
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "segments.sqlite").write_bytes(os.urandom(5000))
    result = CliRunner().invoke(app, [*command, "--db", str(tmp_path / "db")])
    said = result.stderr.strip()
    assert result.exit_code == 2 and "\n" not in said, result.output
    assert f"{tmp_path / 'db' / 'segments.sqlite'}: damaged; restore it from a backup" in said, said


def test_a_warning_is_one_plain_line_after_a_library_logs_through_the_root_logger():
    """`index` printed "WARNING:usesearch.indexer.vector_files:..." where every other
    command printed the warning alone: open_clip's `logging.info` as it builds CLIP
    configured the root logger with logging's default format."""
    code = (
        "import logging, sys\n"
        "import usesearch.cli.app as cli\n"
        "def run(args, **kwargs):\n"
        "    logging.info('Parsing model identifier')  # as open_clip's create_model does\n"
        "    logging.getLogger('usesearch.indexer.vector_files').warning('vectors.faiss does not match')\n"
        "    return 0\n"
        "cli.given_twice = lambda args: None\n"
        "cli.app = run\n"
        "sys.argv = ['usesearch', 'info']\n"
        "cli.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "vectors.faiss does not match\n", done.stderr
