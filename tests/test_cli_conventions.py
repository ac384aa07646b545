"""The command line's conventions: what it refuses and how (one line, before any work),
its exit codes, its outputs on stdout and stderr, and what it imports."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from usesearch.cli.app import app


def test_a_command_line_click_cannot_parse_is_one_line(tmp_path):
    """An unknown flag, a missing argument, a value of the wrong kind: one line on
    stderr naming the command's help, exit 2, as every other failure."""
    cases = [
        (["query", "--bogus"], "No such option: --bogus (see `usesearch query --help`)"),
        (["index"], "Missing argument 'paths'. (see `usesearch index --help`)"),
        (["query", "a cat", "--db", str(tmp_path), "-k", "many"], "Invalid value for '-k'"),
        (["nosuch"], "No such command 'nosuch'. (see `usesearch --help`)"),
        (["export", "--db", "d"], "(a search's hits are exported by `usesearch query TEXT --db DB --export-coco"),
        (["index", "p", "--coco", "a.json", "--coco", "b.json"], "--coco is given twice, and it takes one value"),
        # A query text read as an option: the way to give it (after `--`, which ends even --db).
        (
            ["query", "-5 degrees", "--db", "d"],
            "(a TEXT starting with '-' goes last, after `--`: `usesearch query --db DB -- TEXT`)",
        ),
        (["similar", "-5", "--db", "d"], "No such option: -5 (see `usesearch similar --help`)"),  # no id is < 1
        # A model named where the index's own answers (the hint offered --nprobe and --refine).
        (
            ["query", "a cat", "--db", "d", "--preset", "b16"],
            "(`usesearch query` answers with the model the index was built with: `usesearch info --db DB`)",
        ),
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
    from usesearch.cli.class_lists import class_list

    assert class_list(None, files / "bom.txt") == ["person", "sky"]
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
    """`info`, `failures`, `prune`, `reindex` and `similar SEGMENT_ID` (also on a compressed
    index, whose candidates it re-scores) read the catalog and the vectors only: they
    imported torch, segment_anything and open_clip all the same
    (~4 s and ~800 MB a call on 2 cores, as much for a typo in --db, also `serve`'s and
    `audit`'s, or in `index`'s paths, and for `serve`'s refusal of a host without a
    token). A query, which builds CLIP, imports no transformers."""
    from tests.helpers import OPTS, write_photos
    from usesearch.indexer import IndexOptions, index_paths, reindex

    photos = write_photos(tmp_path / "photos", ("astronaut",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    index_paths([photos], tmp_path / "compressed", IndexOptions(**OPTS))
    reindex(tmp_path / "compressed", "IVF2,SQ8", text_queries=False)  # its candidates re-scored exactly
    commands = [
        ["info"],
        ["failures"],
        ["prune"],
        ["reindex"],
        ["similar", "1"],
        ["similar", "1", "--db", str(tmp_path / "compressed")],
        ["query", "a cat", "--db", "/nowhere"],
        ["serve", "--db", "/nowhere"],
        ["serve", "--host", "0.0.0.0"],  # no token: refused before the web app's libraries load (6 s, now 0.6)
        ["audit", "--db", "/nowhere"],
        ["index", str(tmp_path / "fotos"), "--db", str(tmp_path / "new")],  # a typo in its photos
        ["index", str(tmp_path / "empty"), "--db", str(tmp_path / "new")],  # a disk not mounted
        # b16's weights missing (a first run after the demo): 5-9 s of imports before its one line.
        ["index", str(photos), "--db", str(tmp_path / "new")],
        [
            "segment",
            str(photos / "astronaut.png"),
            "--out",
            str(tmp_path / "labels.png"),
            "--classes",
            "cat",
            "--db",
            "-",
        ],
        ["embed", str(photos / "astronaut.png"), "a cat", "--db", "-"],
    ]
    (tmp_path / "empty").mkdir()
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from usesearch.cli.app import app\n"
        "out = []\n"
        "for args in json.loads(sys.argv[2]):\n"
        "    own = args[-2:] == ['--db', '-']  # (a command that takes no index)\n"
        "    args = args[:-2] if own else args if '--db' in args else [*args, '--db', sys.argv[1]]\n"
        "    done = CliRunner().invoke(app, args)\n"
        "    heavy = [m for m in ('torch', 'segment_anything', 'open_clip', 'timm') if m in sys.modules]\n"
        "    out.append([args[0], done.exit_code, heavy, ' '.join(done.output.split())])\n"
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
    assert [name for name, _, _, _ in ran] == [c[0] for c in commands]
    assert [code for _, code, _, _ in ran] == [0] * 6 + [2] * 9  # each ran (the last nine: refused)
    assert all(heavy == [] for _, _, heavy, _ in ran), ran
    assert all("clip weights for preset 'b16' are not on this machine" in said for *_, said in ran[-3:]), ran[-3:]
    assert not (tmp_path / "new").exists()  # the typo left no index folder


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


def test_the_demo_refuses_a_preset_named_whose_weights_are_missing(tmp_path):
    """`demo -p b16` without b16's weights ran the tiny preset and exited 0: a script took
    random-weight results for the ones it asked for. Unnamed, the demo still falls back."""
    result = CliRunner().invoke(app, ["demo", "--demo-dir", str(tmp_path / "d"), "--preset", "b16"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "b16 weights are not on this machine" in said, said
    assert "`usesearch demo` without --preset runs the random-weight 'tiny' preset" in said
    assert not (tmp_path / "d").exists()  # refused before anything is written


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


def test_train_help_describes_trains_own_preset_and_precision():
    """`train --help` told of a --head's preset and of SAM, neither of which train has."""
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    shown = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    said = " ".join(shown.replace("│", " ").split())  # (rich's box wraps a line anywhere)
    assert "head learns on: b16 (the default)" in said and "the head's weights stay float32" in said, said
    assert "SAM" not in said and "--head's preset" not in said
    shown = CliRunner().invoke(app, ["embed", "--help"], env={"COLUMNS": "200"}).output  # (no SAM in embed either)
    said = " ".join(shown.replace("│", " ").split())
    assert "What the image towers compute in" in said and "SAM" not in said, said


def test_a_message_names_the_first_few_of_many_then_counts_the_rest():
    """One phrasing wherever a message names a few of many things (files, photos, ids)."""
    from usesearch.cli.failures import first_and_more
    from usesearch.errors import first_few

    assert first_few(["a", "b"]) == "a, b"
    assert first_few(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"
    assert first_few([3, 4, 5], shown=1, sep="; ") == "3 and 2 more"
    assert first_and_more(["x/a.png", "b.png"], "a.png") == "a.png and 1 more"


def test_a_label_map_written_to_standard_output_is_a_png(tmp_path):
    """`segment --out -` said "standard output is /dev/stdout", and `--out /dev/stdout`
    was then refused: "write a .png"."""
    import io

    import numpy as np
    from PIL import Image
    from skimage import data

    Image.fromarray(np.ascontiguousarray(data.coffee()[::4, ::4])).save(tmp_path / "c.png")
    args = [
        "segment",
        str(tmp_path / "c.png"),
        "--classes",
        "cup,table",
        "--preset",
        "tiny",
        "--masker",
        "felzenszwalb",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "usesearch", *args, "--out", "/dev/stdout", "--json"], capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    label_map = Image.open(io.BytesIO(done.stdout))
    assert label_map.format == "PNG" and label_map.size == (150, 100)
    # The picture alone on stdout (its status line and JSON were written after its end):
    # what is said of it goes to stderr.
    assert done.stdout.endswith(b"IEND\xaeB`\x82"), done.stdout[-200:]
    said = done.stderr.decode()
    assert '"label_map": "/dev/stdout"' in said and "wrote /dev/stdout" in said, said[-2000:]


def test_an_empty_option_is_refused_without_advice_to_leave_out_one_that_is_required(tmp_path):
    """`--db ''` (an unset shell variable) said "name it, or leave the option out", which
    `index` then refused as a missing option."""
    for args, said, advised in (
        (["index", str(tmp_path), "--db", ""], "'--db': is empty: name it", False),
        (["reindex", "--db", str(tmp_path / "x"), "--factory", ""], "'--factory': is empty: name it", True),
    ):
        result = CliRunner().invoke(app, args)
        shown = " ".join(result.output.split())
        assert result.exit_code == 2 and said in shown, result.output
        assert ("or leave the option out" in shown) == advised, result.output


@pytest.mark.parametrize(
    "command",
    [
        ["segment", "x.png", "--classes", "a,b", "--out", "o.png"],
        ["index", ".", "--db", "db"],
        ["train", "data", "--run-dir", "run"],
        ["curate", "run", "c.json", "--images", ".", "--dataset-dir", "ds"],
        ["demo"],
    ],
    ids=lambda c: c[0],
)
def test_an_unknown_preset_is_refused_as_the_command_line_is_read(command, tmp_path, monkeypatch):
    """`--preset huge` was refused once the model libraries had loaded (4-6 s), or after
    the run's photos were read: now by the option's own check, before any file is read."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*command, "--preset", "huge"])
    said = " ".join(result.output.replace("│", " ").split())  # (rich's error box, joined)
    assert result.exit_code == 2 and "unknown preset 'huge'; choose one of l14-336, b16, tiny" in said, said
    assert not any(tmp_path.iterdir())  # nothing made


def test_an_empty_text_to_embed_is_refused_before_any_model_library_loads(files):
    """`embed IMG ""` was refused by the text model, once torch and CLIP had loaded (6-9 s)."""
    from tests.helpers import invoke_in_a_fresh_python

    [(exit_code, said)], heavy = invoke_in_a_fresh_python(
        ["embed", str(files / "p.jpg"), "a cat", " ", "--preset", "tiny"]
    )
    assert exit_code == 2 and heavy == [] and "cannot embed an empty text" in said, said


def test_a_head_checkpoint_given_as_the_preset_is_taken_and_a_missing_one_said(tmp_path):
    """`--preset CHECKPOINT` names a head and its preset (``load_model``'s first argument):
    the preset check as the command line is read must let it through."""
    import typer

    import usesearch
    from usesearch.cli.options import known_preset
    from usesearch.models.factory import create_use

    use = create_use("tiny")
    usesearch.save_head(tmp_path / "run" / "head", use.trainable_state_dict(), use.preset, {"step": 1})
    for named in ("run", "run/head", "run/head.safetensors", "run/head.json"):
        assert known_preset(str(tmp_path / named)) == str(tmp_path / named)
    with pytest.raises(typer.BadParameter, match="no head checkpoint there .nor is it a preset: l14-336, b16, tiny"):
        known_preset(str(tmp_path / "gone" / "head"))
    with pytest.raises(typer.BadParameter, match="unknown preset 'huge'"):
        known_preset("huge")
