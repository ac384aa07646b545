"""The Ray session around ``index --ray``: an address nothing answers at, or something
that is no Ray cluster, refused at once; a cluster that cannot be joined, or Ctrl-C while
Ray starts, leaving nothing behind; an error mid-run said in one line before Ray shuts
down; the read stages' workers importing no model library."""

import contextlib
import time

import pytest

pytest.importorskip("ray", reason="the distributed extra is not installed: pip install -e '.[distributed]'")

from tests.helpers import OPTS, index_on_ray_in_a_process  # noqa: E402
from tests.test_distributed import write_ray_photos  # noqa: E402
from usesearch.errors import UsesearchError  # noqa: E402
from usesearch.indexer import IndexOptions, distributed  # noqa: E402
from usesearch.indexer.distributed import index_paths_ray  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_ray_photos(tmp_path_factory.mktemp("ray") / "photos")


def test_an_error_mid_run_is_said_in_one_line_before_ray_shuts_down(photos, tmp_path):
    """The catalog lost mid-run (its retries take a while, as PostgreSQL's do): the run's
    own Ray session ends after Ray Data's iterator threads, which it left waiting on an
    actor, so the CLI's one line and exit 2 come out; Ray used to end the process first
    (exit 1, "The core worker has already been shutdown")."""
    patch = (
        "import time; from usesearch.errors import UsesearchError; from usesearch.indexer import distributed\n"
        "real, calls = distributed._commit, []\n"
        "def commit(*a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        time.sleep(3)\n"
        "        raise UsesearchError('the catalog database is unreachable (lost); run again to resume')\n"
        "    return real(*a, **k)\n"
        "distributed._commit = commit\n"
    )
    returncode, _, err = index_on_ray_in_a_process(patch, photos, tmp_path / "db")
    assert returncode == 2, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: the catalog database is unreachable (lost); run again to resume"


def test_an_address_nothing_answers_at_is_refused_at_once_leaving_no_index(photos, tmp_path):
    start = time.perf_counter()
    with pytest.raises(UsesearchError, match="no Ray cluster answers"):
        index_paths_ray([photos], tmp_path / "db", IndexOptions(**OPTS), address="127.0.0.1:1")
    with pytest.raises(UsesearchError, match="HOST:PORT"):
        index_paths_ray([photos], tmp_path / "db", IndexOptions(**OPTS), address="somewhere")
    assert time.perf_counter() - start < 30 and not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    "answer, ray_like",
    [
        (None, False),  # accepts, says nothing (a port forwarded to nowhere)
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", False),  # the dashboard's port given for the GCS's
        (b"\x00\x00\x18\x04\x00\x00\x00\x00\x00", True),  # an HTTP/2 server's SETTINGS, as Ray's GCS sends
    ],
)
def test_an_address_that_answers_but_is_no_ray_cluster_is_refused_at_once(photos, tmp_path, answer, ray_like):
    """`--ray HOST:8265` (the dashboard) or a port something else holds passed the check
    that a connection opens, and `ray.init` then waited minutes, a retry warning every
    few seconds. Ray's GCS speaks gRPC: it answers HTTP/2's preface with SETTINGS."""
    import socket
    import threading

    from usesearch.indexer.ray_cluster import check_address

    server = socket.create_server(("127.0.0.1", 0))
    heard: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            heard.append(conn.recv(24))
            if answer is not None:
                conn.sendall(answer)
            with contextlib.suppress(ConnectionResetError):  # (a checker may reset rather than close)
                conn.recv(1)  # until the checker closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        if ray_like:
            check_address(address, timeout=2.0)
        else:
            with pytest.raises(UsesearchError, match="something answers there, but not a Ray cluster"):
                check_address(address, timeout=2.0)
    finally:
        thread.join(5)
        server.close()
    assert heard == [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]


def test_a_cluster_that_cannot_be_joined_leaves_no_index_folder(photos, tmp_path, monkeypatch):
    import ray

    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(UsesearchError, match="--ray auto: no Ray cluster runs on this machine"):  # in our flags
        index_paths_ray([photos], tmp_path / "db", IndexOptions(**OPTS), address="auto")
    assert not (tmp_path / "db").exists()  # a later run may choose its own model and masker


def test_a_ctrl_c_while_ray_starts_shuts_its_half_started_session_down(monkeypatch):
    """Ctrl-C landing in ``ray.init`` left Ray's half-started session up, and the
    interpreter's exit then crashed (a segfault, not exit 130) in some runs."""
    import ray

    from usesearch.indexer.ray_cluster import ray_session

    shut: list[int] = []

    def interrupted_init(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", interrupted_init)
    monkeypatch.setattr(ray, "shutdown", lambda: shut.append(1))
    with pytest.raises(KeyboardInterrupt):
        with ray_session():
            pytest.fail("the session must not start")
    assert shut == [1]


def test_the_read_stages_ray_workers_run_import_no_model_library():
    """Ray's CPU tasks read and hash every photo: their module loaded torch, open_clip
    and faiss (~3 s and ~800 MB in each worker process) to hash files."""
    import subprocess
    import sys

    from usesearch.indexer import ray_reads

    assert distributed.hash_files is ray_reads.hash_files and distributed.decode_files is ray_reads.decode_files
    code = (
        "import sys, pickle, functools, usesearch.indexer.ray_reads as r\n"
        "pickle.loads(pickle.dumps(functools.partial(r.hash_files, max_bytes=1)))\n"
        "print([m for m in ('torch', 'open_clip', 'segment_anything', 'faiss', 'timm') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
