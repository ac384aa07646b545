"""One spelling per concept across commands; old spellings still work for one
release, with a deprecation message."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers import parsed
from usesearch.cli.app import app, given_twice, with_ray_address

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
        app, ["audit", "--coco", str(files / "a.json"), "--images", str(files / "i"), "-p", "tiny"]
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


@pytest.mark.parametrize("flag", ["--coco", "--images"])
def test_the_old_audit_flags_beside_db_say_where_each_job_went(flag):
    """``audit --coco FILE --db DIR`` got click's bare "No such option: --coco": the old
    spelling counts only without --db, and nothing said what to run instead."""
    result = CliRunner().invoke(app, ["audit", flag, "a.json", "--db", "/nowhere"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{flag}: audit --db DIR reads what the index holds" in result.output
    assert "usesearch index IMAGES --coco FILE --db DIR" in result.output and "eval audit" in result.output
