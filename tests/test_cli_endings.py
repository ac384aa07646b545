"""How a command ends: its exit codes (3 where every photo failed), a Ctrl-C at any
moment (one line, exit 130), a reader that closes the pipe early, stderr closed, and an
unexpected error (one line and the way to its traceback)."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from usesearch.cli.app import app


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
    assert "2 of the 2 skipped failed in an earlier run" in said and "--retry-failed" in said  # (not the copies)
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


def test_an_encoding_error_is_unexpected_and_offers_its_traceback(tmp_path, monkeypatch):
    """A UnicodeEncodeError raised inside SQLite's driver was a ValueError, said as the
    user's to fix: exit 2, no way to see where it came from."""
    from usesearch.indexer import search

    def fails(*args, **kwargs):
        raise UnicodeEncodeError("utf-8", "caf\udce9", 3, 4, "surrogates not allowed")

    monkeypatch.setattr(search.SegmentIndex, "open", fails)
    result = CliRunner().invoke(app, ["query", "x", "--db", str(tmp_path)])
    assert result.exit_code == 1 and "unexpected UnicodeEncodeError" in result.stderr, result.output
    assert "USESEARCH_DEBUG=1" in result.stderr


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


def test_a_ctrl_c_while_python_shuts_down_ends_the_process_quietly_with_the_commands_code():
    """A second Ctrl-C after a command said its last line (training's "interrupted ...
    checkpoint written") reached torch's exit callback: "Exception ignored in atexit
    callback" and a traceback."""
    from tests.helpers import run_python

    code = (
        "import atexit, os, signal, sys, time\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))\n"
        "from usesearch.cli.app import main\n"
        "sys.argv = ['usesearch', 'models', 'list', '--json']\n"
        "main()\n"
    )
    proc = run_python(code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and json.loads(out), err[-2000:]  # its outcome stands, its output whole
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]


def test_a_command_started_with_stderr_closed_keeps_its_exit_code():
    """`usesearch ... 2>&-`: Python gives no sys.stderr; the flush before exit failed on
    it, and every command exited 1, its traceback going nowhere."""
    done = subprocess.run(
        [sys.executable, "-m", "usesearch", "models", "list", "--json"],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.close(2),  # noqa: PLW1509 - the child alone, before it runs
        timeout=120,
    )
    assert done.returncode == 0 and json.loads(done.stdout)
