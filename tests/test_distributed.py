"""Indexing on Ray (``index --ray``), locally with two CPU workers: the index equals a
sequential run's (segments, masks, embeddings), also when a worker or the driver is
killed with kill -9 mid-run, and with the catalog in PostgreSQL; the fragments a killed
run left, a retried call's twin, a rerun's skips (the Ray session around a run:
test_distributed_session.py)."""

import os
import signal
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="the distributed extra is not installed: pip install -e '.[distributed]'")

from tests.helpers import (  # noqa: E402
    OPTS,
    assert_consistent,
    kill_when,
    run_python,
    segment_table,
    settle,
    sqlite_count,
    write_photos,
)
from usesearch.indexer import (  # noqa: E402
    IndexOptions,
    SegmentIndex,
    distributed,  # noqa: E402
    fragments,
    index_paths,
)
from usesearch.indexer.distributed import index_paths_ray  # noqa: E402
from usesearch.io.atomic import save_picture  # noqa: E402

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def write_ray_photos(folder: Path) -> Path:
    """The photos of a Ray run: ``NAMES``, a broken file, a copy, and a picture usesearch wrote."""
    folder = write_photos(folder, NAMES)
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    write_photos(folder / "again", NAMES[:1])  # the same pixels under another path: indexed once
    save_picture(Image.new("RGB", (40, 30), "red"), folder / "sheet.png")  # usesearch's: not a photo
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_ray_photos(tmp_path_factory.mktemp("ray") / "photos")


@pytest.fixture(scope="module")
def sequential(photos, tmp_path_factory):
    db = tmp_path_factory.mktemp("sequential") / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    return db


def vectors_by_segment(db, db_url=None) -> dict:
    ix = SegmentIndex.open(db, db_url=db_url)
    rows = ix.store.rows(ix.store.segment_ids())
    out = {}
    for ids, vecs in ix.store.embeddings(list(rows)):
        for i, v in zip(ids, vecs):
            r = rows[int(i)]
            out[(os.path.basename(r.image_path), r.bbox, r.rle_counts)] = v
    ix.close()
    return out


def assert_same_index(db, reference, db_url=None):
    assert segment_table(db, db_url) == segment_table(reference)
    a, b = vectors_by_segment(db, db_url), vectors_by_segment(reference)
    assert a.keys() == b.keys() and len(a) > 20
    np.testing.assert_allclose(np.stack([a[k] for k in b]), np.stack(list(b.values())), atol=2e-3)
    assert_consistent(db, db_url)
    ix = SegmentIndex.open(db, db_url=db_url)
    failed = {os.path.basename(f.path): f for f in ix.store.failures()}
    assert (
        sorted(failed) == ["broken.png", "sheet.png"]
        and "a picture usesearch wrote" in failed["sheet.png"].error_message
    )
    assert failed["broken.png"].error_class == "ImageReadError"  # the worker's error, under its own name
    ix.close()
    assert not list((Path(db) / fragments.FRAGMENTS).glob("*.npz"))  # every fragment committed and removed


def photos_in_commit_order(db, db_url=None) -> list[str]:
    """The photos with segments, in the order of their segments' ids (their commits')."""
    ix = SegmentIndex.open(db, db_url=db_url)
    rows = ix.store.rows(ix.store.segment_ids())
    ix.close()
    return list(dict.fromkeys(os.path.basename(rows[i].image_path) for i in sorted(rows)))


def _segment_worker_pids(session: int | None = None) -> list[int]:
    """The SegmentWorker actors of this process's own Ray (its descendants), or of the
    session ``session`` leads (a killed driver's: its actors, re-parented to init, keep
    its session). Matched by command line alone, another test's process was killed too
    (the xdist worker beside this one runs the CLI with a patch naming SegmentWorker)."""
    stats = {}  # pid -> (ppid, session): "pid (comm) state ppid pgrp session ..."; comm may hold ")"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                stats[int(entry.name)] = (int(fields[1]), int(fields[3]))
            except (OSError, ValueError, IndexError):
                continue

    def ours(pid: int) -> bool:
        if session is not None:
            return stats[pid][1] == session
        while pid > 1:
            pid = stats.get(pid, (0, 0))[0]
            if pid == os.getpid():
                return True
        return False

    pids = []
    for pid in stats:
        try:
            if ours(pid) and b"SegmentWorker" in (Path("/proc") / str(pid) / "cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_ray_index_on_postgresql_equals_a_sequential_run_with_a_worker_killed(
    ray_local, photos, sequential, tmp_path, pg_url, monkeypatch
):
    """A worker killed with kill -9 mid-run is replaced, and nothing is lost or doubled:
    the index, its catalog in PostgreSQL, equals a sequential run's on SQLite, and a
    rerun has nothing left to do. (SQLite on Ray: the driver-killed test, the crash
    test and test_coco_ray.)"""
    seen, killed = [], []

    def kill_a_worker(report, path, total):
        seen.append(report.segments)
        if report.done >= 1 and not killed:
            for pid in _segment_worker_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    from usesearch.indexer.store import Store

    real_save, together = Store.save_images, []
    monkeypatch.setattr(
        Store, "save_images", lambda store, photos: together.append(len(photos)) or real_save(store, photos)
    )
    options = IndexOptions(**OPTS, db_url=pg_url)
    monkeypatch.setattr(distributed, "WINDOW", 5)  # two windows of photos: a Ray pipeline each
    monkeypatch.setattr(distributed, "photos_per_call", lambda options, gpus: 2)  # as a GPU's actors take several
    settle(photos)  # for the rerun below to skip every file unread
    import ray.data

    made, real_from_items = [], ray.data.from_items  # each dataset copies Ray Data's settings when made
    monkeypatch.setattr(ray.data, "from_items", lambda rows: made.append(real_from_items(rows)) or made[-1])
    report = index_paths_ray([photos], tmp_path / "db", options, kill_a_worker)
    assert len(made) >= 3 and all(dataset.context.execution_options.preserve_order for dataset in made)
    assert killed, "no Ray worker was found to kill"
    assert max(together) == 2  # an actor call's photos committed in one transaction
    assert report.done == len(NAMES) and report.failed == 2 and report.skipped == 1
    assert seen == sorted(seen) and seen[-1] == report.segments > 0  # progress as images commit
    assert_same_index(tmp_path / "db", sequential, pg_url)
    # In the walk's order, as the sequential run: Ray Data's order was set after the first
    # window's dataset was made, which then committed its photos as they came.
    assert photos_in_commit_order(tmp_path / "db", pg_url) == photos_in_commit_order(sequential)

    hashed, from_items = [], ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", lambda rows: hashed.extend(rows) or from_items(rows))
    again = index_paths_ray([photos], tmp_path / "db", options)
    assert again.done == 0 and again.skipped == len(NAMES) + 3  # the failed ones are skipped too, unless retried
    # Unread where the file's stat is the one its worker took before hashing it: the failed
    # file and the copy of another path's pixels too (they were read again each run).
    assert hashed == []


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_driver_killed_with_kill_dash_nine_resumes_to_the_same_index(photos, sequential, tmp_path):
    db = tmp_path / "db"
    code = (
        "import sys; from usesearch.indexer import IndexOptions; "
        "from usesearch.indexer.distributed import index_paths_ray; "
        "index_paths_ray([sys.argv[1]], sys.argv[2], IndexOptions(preset='tiny', masker='felzenszwalb', "
        "masker_options={'max_masks': 8}), workers=1)"
    )
    proc = run_python(code, photos, db, start_new_session=True)
    # The driver only: its Ray processes are left to notice.
    done = kill_when(
        proc,
        lambda: sqlite_count(db / "segments.sqlite", "select count(*) from images where status = 'done'"),
        lambda n: n >= 2,
        start=0,
        timeout=240,
        every=0.1,
    )
    tidy = threading.Timer(30, _kill_group, (proc.pid,))  # what is left, should this run hang
    tidy.start()
    resumed = index_paths_ray([photos], db, IndexOptions(**OPTS))
    assert resumed.skipped >= done >= 2
    # The killed run's actor may yet finish a photo this run committed, and leave its
    # fragment: the next run deletes such fragments (one is put there, so that it must).
    tidy.cancel()
    _kill_group(proc.pid)  # its Ray (its actors, in process groups of their own, end within seconds)
    deadline = time.time() + 30
    while _segment_worker_pids(session=proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    sha = sqlite_count(db / "segments.sqlite", "select sha256 from images where status = 'done' limit 1")
    fragments.write_fragment(fragments.fragment_path(db, sha), (4, 4), [], np.zeros((0, 0)))
    again = index_paths_ray([photos], db, IndexOptions(**OPTS))
    assert again.done == again.failed == 0 and again.skipped == resumed.skipped + resumed.done + resumed.failed
    assert_same_index(db, sequential)


def test_shards_filled_in_parallel_on_ray_answer_as_a_local_rebuild(ray_local, tmp_path):
    import shutil

    from tests.test_index_scale import synthetic_index
    from tests.test_shards import answers
    from usesearch.indexer import reindex
    from usesearch.indexer.distributed import rebuild_on_ray

    data = synthetic_index(tmp_path / "local", n=6_000)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    reindex(tmp_path / "local", shard_size=1_500)
    assert reindex(tmp_path / "ray", shard_size=1_500, build=rebuild_on_ray).vectors == len(data)
    local, on_ray = SegmentIndex.open(tmp_path / "local"), SegmentIndex.open(tmp_path / "ray")
    assert len(on_ray.index.shards) == 4 and [s.ntotal for s in on_ray.index.shards] == [
        s.ntotal for s in local.index.shards
    ]
    queries = data[np.random.default_rng(0).integers(0, len(data), 4)]
    assert answers(on_ray, queries) == answers(local, queries)
    assert_consistent(tmp_path / "ray")


def test_fragments_a_killed_run_left_are_committed_not_computed_again(tmp_path):
    """The photos still to compute are chosen before the left fragments' commits delete
    them: they were sent through the models again, and counted twice."""
    sha = "ab" * 32
    fragment = fragments.fragment_path(tmp_path, sha)
    fragments.write_fragment(fragment, (4, 4), [], np.zeros((0, 0)))  # left by a killed run
    (fragment.parent / f"{'cd' * 32}.attempts").write_text("1")  # its actor died with that run
    rows = []
    for group in distributed._compute([{"sha256": sha, "path": "p.png"}], tmp_path, IndexOptions(**OPTS), None):
        rows += group
        fragment.unlink()  # as the commit does
    assert [(r["sha256"], r["segments"]) for r in rows] == [(sha, -1)]  # and Ray was never asked to compute
    assert not list(fragment.parent.iterdir())


def test_a_damaged_fragment_a_killed_run_left_is_computed_again_and_said(tmp_path, monkeypatch, caplog):
    """One cut short (a disk's fault, a bad copy) failed every later --ray run in
    zipfile's words ("BadZipFile: File is not a zip file"), naming no file."""
    sha = "ab" * 32
    fragment = fragments.fragment_path(tmp_path, sha)
    fragments.write_fragment(fragment, (4, 4), [], np.zeros((0, 0)))
    fragment.write_bytes(fragment.read_bytes()[:300])
    sent = []

    class Computed:
        def iter_batches(self, **kwargs):
            return iter(())

    monkeypatch.setattr(distributed, "decoded_and_computed", lambda todo, *args: sent.extend(todo) or Computed())
    rows = [
        r
        for group in distributed._compute([{"sha256": sha, "path": "p.png"}], tmp_path, IndexOptions(**OPTS), None)
        for r in group
    ]
    assert rows == [] and [r["sha256"] for r in sent] == [sha] and not fragment.exists()
    assert "cannot be read (" in caplog.text and f"{sha}.npz; its photo is computed again" in caplog.text


def test_a_run_deletes_the_fragments_of_photos_committed_and_half_written_ones(tmp_path):
    """What a killed run's actors left that no run would read: a fragment of a photo
    committed since, a temporary file killed before its rename. A fragment still to be
    committed stays, and coco_ray's (its own to drop)."""
    names = {"done": "ab" * 32, "pending": "cd" * 32}
    for sha in names.values():
        fragments.write_fragment(fragments.fragment_path(tmp_path, sha), (4, 4), [], np.zeros((0, 0)))
    folder = tmp_path / fragments.FRAGMENTS
    (folder / f".{names['done']}.npz.123.tmp").write_bytes(b"half")
    (folder / "coco-val-1-abababababababab.npz").write_bytes(b"coco_ray's")
    assert fragments.drop_committed(tmp_path, lambda sha: sha == names["done"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["coco-val-1-abababababababab.npz", f"{names['pending']}.npz"]
    )


def test_a_twin_within_an_actor_calls_group_is_committed_once(photos, tmp_path):
    """A retried task's twin in the same group as its first result, for a path whose old
    record (other content) the group had not yet replaced: both were written, and FAISS
    kept the vectors of the first, whose rows the second replaced."""
    from tests.test_store_writes import segments
    from usesearch.indexer.options import IndexReport
    from usesearch.indexer.writer import Writer

    index_paths([photos / "sub"], tmp_path / "db", IndexOptions(**OPTS))
    with Writer(tmp_path / "db", IndexOptions(**OPTS), None) as writer:
        key, path = next((bytes(k), p) for _, k, p in writer.store.image_files())
        changed = "f" * 64  # the file's content changed since it was indexed
        vectors = np.random.default_rng(0).standard_normal((3, writer.info.dim)).astype(np.float32)
        fragments.write_fragment(fragments.fragment_path(tmp_path / "db", changed), (10, 10), segments(3), vectors)
        row = {"fs_path": key, "path": path, "sha256": changed, "error": "", "segments": 3, "file_stat": None}
        report = IndexReport()
        distributed._commit([row, dict(row)], writer, tmp_path / "db", report)
        writer.write()
    assert (report.done, report.skipped, report.segments) == (1, 1, 3)
    assert_consistent(tmp_path / "db")
    # A fragment two photos of one content share (labelled, each its own) goes once both
    # are committed: a retried task's twin of the first counts once (it was counted twice).
    fragment = fragments.fragment_path(tmp_path / "db", changed)
    fragments.write_fragment(fragment, (10, 10), segments(3), vectors)
    wanted = {changed: {key, b"/elsewhere/other.png"}}
    with Writer(tmp_path / "db", IndexOptions(**OPTS), None) as writer:
        distributed._commit([row, dict(row)], writer, tmp_path / "db", IndexReport(), wanted)
        assert fragment.is_file() and wanted[changed] == {b"/elsewhere/other.png"}
        other = {**row, "fs_path": b"/elsewhere/other.png"}
        distributed._commit([other], writer, tmp_path / "db", IndexReport(), wanted)
    assert not fragment.exists()


def test_two_photos_that_kill_their_worker_in_one_call_both_end_as_worker_died(tmp_path):
    """An actor call of four photos, two of which kill the actor (as Ray retries the
    call after each death, without end). A WorkerDied verdict's note was deleted when
    given, so the next retry (after the other photo's death) counted that photo from
    zero again: the two took turns killing the actor for ever."""

    class Died(BaseException):  # the actor's process ending: nothing after it in the call runs
        pass

    class Worker(distributed.SegmentWorker):
        def __init__(self):  # no models: ``compute`` stands in for them
            self.db_dir, self.masker = str(tmp_path), types.SimpleNamespace(images_per_call=4)

        def compute(self, rgbs, paths):
            if {"a", "b"} & set(paths):
                raise Died(paths)
            return [([], np.zeros((0, 4), np.float32)) for _ in paths]

    shas = [c * 64 for c in "abcd"]
    batch = {
        "fs_path": [p.encode() for p in "abcd"],
        "path": list("abcd"),
        "sha256": shas,
        "file_stat": [""] * 4,
        "error": [""] * 4,
        "rgb": [np.zeros((4, 4, 3), np.uint8)] * 4,
    }
    for tries in range(1, 20):  # as Ray retries the call
        try:
            out = Worker()(batch)
            break
        except Died:
            continue
    else:
        pytest.fail("the call never got through: its actor died on every try")
    assert tries <= 4  # the four together, then a alone (dies), b alone (dies), then the verdicts
    assert [e.split(":")[0] for e in out["error"]] == ["WorkerDied", "WorkerDied", "", ""]
    assert out["segments"].tolist() == [-1, -1, 0, 0]
    assert fragments.attempts_path(tmp_path, shas[0]).exists()  # the verdict's note, until it is committed


def test_a_ray_rerun_skips_copies_and_failed_files_unread_as_the_sequential_one_does(tmp_path, monkeypatch):
    """Ray's driver sent every copy and every failed file to its workers to be hashed, each run."""
    import shutil

    from usesearch.indexer import known_images
    from usesearch.indexer.options import IndexReport
    from usesearch.indexer.writer import Writer
    from usesearch.io.files import photos_under

    monkeypatch.setattr(known_images, "RACY_NS", 0)
    photos = write_photos(tmp_path / "photos", NAMES[:2])
    shutil.copy(photos / f"{NAMES[0]}.png", photos / "copy.png")
    (photos / "broken.png").write_bytes(b"\x89PNG broken")
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    files = photos_under([photos])
    report = IndexReport()
    import ray.data

    monkeypatch.setattr(ray.data, "from_items", lambda *a, **k: pytest.fail("files sent to the workers to hash"))
    with Writer(tmp_path / "db", IndexOptions(**OPTS), None) as writer:
        assert distributed._pending(files, writer, IndexOptions(**OPTS), report) == []  # nothing left to hash
        assert (report.skipped, len(files), writer.failed_before, len(writer.copies)) == (4, 4, 1, 1)


def test_a_file_a_worker_found_gone_is_said_not_recorded_as_the_sequential_run_does(tmp_path):
    """A photo deleted after Ray's walk came back from its worker as text, recorded as a
    failure ("FileNotFoundError: ...") that no later run could meet; the sequential run
    says it went and records nothing."""
    from usesearch.indexer.fragments import error_text, worker_error
    from usesearch.indexer.options import IndexReport
    from usesearch.indexer.writer import Writer

    photos = write_photos(tmp_path / "photos", NAMES[:1])
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    gone, broken = str(photos / "deleted.png"), str(photos / "broken.png")
    (photos / "broken.png").write_bytes(b"\x89PNG broken")
    report = IndexReport()
    with Writer(tmp_path / "db", IndexOptions(**OPTS), None) as writer:
        for path, exc in (
            (gone, FileNotFoundError(2, "No such file or directory", gone)),
            (broken, ValueError("cannot identify image file")),
        ):
            writer.fail(os.fsencode(path), path, None, worker_error(error_text(exc)), report)
    assert report.gone == [gone]
    from usesearch.indexer.folder import open_store

    store = open_store(tmp_path / "db", read_only=True)
    try:
        assert [(r.path, r.error_class) for r in store.failures()] == [(broken, "ValueError")]
    finally:
        store.close()
