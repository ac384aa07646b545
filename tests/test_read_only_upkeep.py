"""The writing commands (`index`, `reindex`, `calibrate`, `prune`) on an index that cannot
be written (a read-only mount, a folder of another user) say so in one line, where
`reindex` and `calibrate` said SQLite's "database: unable to open database file"; and
`calibrate` answers an index with nothing to tune as it does where it can write."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_index_scale import synthetic_index
from usesearch.cli.app import app
from usesearch.indexer import reindex

EXACT = "has an exact index (IDMap2,Flat): its recall is 1, nothing to tune"


def _errors(db: Path, *commands: str) -> list[tuple[int, str]]:
    """(exit code, stderr) of each command on ``db``."""
    out = []
    for command in commands:
        result = CliRunner().invoke(app, [command, "--db", str(db)])
        out.append((result.exit_code, result.stderr.strip()))
    return out


@pytest.fixture
def read_only_fs(monkeypatch):
    """The folders asked for as a read-only file system shows them to ``os.access`` and
    ``os.statvfs`` (without root: as root, a chmod stops no write)."""
    folders: set[str] = set()
    access, statvfs = os.access, os.statvfs

    def denied(path, mode, *args, **kwargs):
        if mode & os.W_OK and os.path.abspath(path) in folders:
            return False
        return access(path, mode, *args, **kwargs)

    class ReadOnly:
        def __init__(self, real):
            self.real = real
            self.f_flag = real.f_flag | os.ST_RDONLY

        def __getattr__(self, name):
            return getattr(self.real, name)

    def mounted(path):
        real = statvfs(path)
        return ReadOnly(real) if os.path.abspath(path) in folders else real

    monkeypatch.setattr(os, "access", denied)
    monkeypatch.setattr(os, "statvfs", mounted)
    return lambda db: folders.add(os.path.abspath(db))


def test_reindex_and_calibrate_say_the_folder_is_read_only(tmp_path, read_only_fs):
    db = tmp_path / "db"
    synthetic_index(db, n=3000, dim=32)
    # As where it can write: an exact index has nothing to tune.
    assert _errors(db, "calibrate") == [(2, f"error: {db} {EXACT}")]
    read_only_fs(db)
    said = _errors(db, "reindex", "calibrate", "prune")
    assert [code for code, _ in said] == [2, 2, 2]
    reindexed, calibrated, pruned = (message for _, message in said)
    assert reindexed == (
        f"error: {db} is on a read-only file system: `usesearch reindex` rewrites its FAISS files; "
        "`query`, `info` and `serve` read the index as it is"
    )
    assert calibrated == f"error: {db} {EXACT}"  # the same answer as where it can write
    assert pruned.startswith(f"error: {db} is on a read-only file system: `usesearch prune` ")
    assert "database" not in reindexed + calibrated + pruned


def test_calibrate_on_a_read_only_ivf_index_says_so(tmp_path, read_only_fs):
    db = tmp_path / "db"
    synthetic_index(db, n=3000, dim=32)
    reindex(db, "IVF16,Flat", text_queries=False)
    read_only_fs(db)
    [(code, message)] = _errors(db, "calibrate")
    assert code == 2 and message == (
        f"error: {db} is on a read-only file system: `usesearch calibrate` records its measurement there; "
        "`query`, `info` and `serve` read the index as it is"
    )


def test_on_a_read_only_mount(tmp_path):
    """The user's case: a bind mount made read-only (needs root and a mount namespace)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a folder read-only")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:  # a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()[-200:]}")
    synthetic_index(tmp_path / "rw" / "db", n=3000, dim=32)
    (tmp_path / "ro").mkdir()
    code = (
        "import sys; from usesearch.cli.app import app\n"
        "for command in ('reindex', 'calibrate'):\n"
        "    try:\n"
        "        app([command, '--db', sys.argv[1]], prog_name='usesearch', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
    )
    # Exit 97 where the mount itself fails (the machine's, skipped); a hang of the commands fails the test.
    script = '{ mount --bind "$1" "$2" && mount -o remount,bind,ro "$2"; } || exit 97; exec "$3" -c "$4" "$2/db"'
    try:
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", tmp_path / "rw", tmp_path / "ro", sys.executable, code],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
    except OSError as exc:
        pytest.skip(f"cannot run in a mount namespace here: {exc}")
    if done.returncode == 97:
        pytest.skip(f"cannot mount read-only here: {done.stderr[-300:]}")
    db = tmp_path / "ro" / "db"
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {db} is on a read-only file system: `usesearch reindex` rewrites its FAISS files; "
        "`query`, `info` and `serve` read the index as it is",
        f"error: {db} {EXACT}",
    ], done.stderr[-2000:]


def test_index_into_a_read_only_folder_says_so_before_any_model_loads(tmp_path, read_only_fs, monkeypatch):
    """`index` said the lock's "writer.lock: Read-only file system", after its models had
    loaded; a new index under a read-only folder, mkdir's words."""
    from tests.helpers import write_photos
    from usesearch.indexer import pipeline

    monkeypatch.setattr(pipeline, "load_models", lambda *a, **k: pytest.fail("models loaded"))
    photos, db = write_photos(tmp_path / "photos", ("coffee",)), tmp_path / "db"
    synthetic_index(db, n=300, dim=32)
    (tmp_path / "mount").mkdir()
    read_only_fs(db)
    read_only_fs(tmp_path / "mount")
    said = [
        CliRunner().invoke(app, ["index", str(photos), "--db", str(where), "--preset", "tiny"])
        for where in (db, tmp_path / "mount" / "new" / "db")
    ]
    assert [result.exit_code for result in said] == [2, 2]
    assert said[0].stderr.strip() == (
        f"error: {db} is on a read-only file system: `usesearch index` adds the photos' segments to it; "
        "`query`, `info` and `serve` read the index as it is"
    )
    assert said[1].stderr.strip() == (
        f"error: {tmp_path / 'mount'} is on a read-only file system: "
        f"`usesearch index` cannot make {tmp_path / 'mount' / 'new' / 'db'} in it; give another --db"
    )
    assert not (tmp_path / "mount" / "new").exists()


def test_an_audit_and_a_verdict_on_a_read_only_index_say_so(tmp_path, read_only_fs):
    """`audit --db RO --report-dir ELSEWHERE` failed with "RO/audit: Read-only file
    system" (after every pass, where its folder was there); a verdict through `serve`
    was a 500, "the index database failed"."""
    from sqlalchemy import create_engine

    from usesearch.errors import IndexReadOnlyError
    from usesearch.indexer.audit import reviews
    from usesearch.indexer.folder import DB_FILE

    db = tmp_path / "db"
    synthetic_index(db, n=300, dim=16)
    read_only_fs(db)
    result = CliRunner().invoke(app, ["audit", "--db", str(db), "--report-dir", str(tmp_path / "elsewhere")])
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"error: {db} is on a read-only file system: `usesearch audit` keeps its lists and resumable passes in "
        f"{db / 'audit'} (audit a copy of the index); `query`, `info` and `serve` read the index as it is"
    ), result.stderr
    reader = create_engine(f"sqlite:///file:{db / DB_FILE}?mode=ro&uri=true")
    with pytest.raises(IndexReadOnlyError, match="this index is read-only here: a verdict cannot be kept in it"):
        reviews.mark(reader, "swapped", "val:1", "ok")
    reader.dispose()


@pytest.mark.parametrize("command", ["train", "curate"])
def test_an_output_folder_on_a_read_only_file_system_is_refused_by_its_flag_before_any_model(
    command, tmp_path, read_only_fs
):
    """`train --run-dir` and `curate run --dataset-dir` there said "error: .../run:
    Read-only file system" once the datasets and models had loaded, naming no flag."""
    mounted = tmp_path / "ro"
    mounted.mkdir()
    read_only_fs(mounted)
    args = {
        "train": ["train", str(tmp_path), "--run-dir", str(mounted / "out"), "--preset", "tiny"],
        "curate": ["curate", "run", str(tmp_path), "--dataset-dir", str(mounted / "out"), "--preset", "tiny"],
    }[command]
    result = CliRunner().invoke(app, args)
    said = "".join(result.output.replace("│", "").split())  # (typer's box wraps long paths)
    flag = "--run-dir" if command == "train" else "--dataset-dir"
    assert result.exit_code == 2 and f"Invalidvaluefor'{flag}'" in said, said
    assert f"{mounted}isonaread-onlyfilesystem,where{mounted / 'out'}wouldbemade" in said, said
