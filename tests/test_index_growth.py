"""An automatic index grows into the type its size calls for during a run: in a thread
of its own while the run goes on (``indexer/growth.py``), written and recorded so that a
kill, a full disk or a reader in between never leaves files the catalog does not name."""

import threading
import time

import pytest

import usesearch.indexer.index_choice as index_choice
from tests.helpers import OPTS, write_photos
from usesearch.indexer import IndexOptions, SegmentIndex, growth, index_kinds, index_paths, reindex


@pytest.fixture()
def small_growth(monkeypatch):
    """Past 20 segments an index grows into a small IVF the few test segments can train
    (the real one needs thousands)."""
    monkeypatch.setattr(index_choice, "EXACT_UP_TO", 20)
    real_choose = index_choice.choose
    monkeypatch.setattr(
        index_choice,
        "choose",
        lambda n, dim, gpu=False: (
            real_choose(n, dim)
            if n <= 20
            else index_choice.IndexChoice("IVF4,Flat", "test", False, nprobe=4, train_size=n)
        ),
    )
    # Built at once (joined where the writer asks whether it is done): these tests count
    # on the write it lands in; the thread itself is the next test's.
    monkeypatch.setattr(growth.Build, "done", lambda self: (self._thread.join(), True)[1])


def test_the_run_goes_on_while_the_grown_index_is_built_and_it_catches_up_after(tmp_path, monkeypatch, small_growth):
    """The rebuild ran in the writer's thread: minutes at tens of millions of segments, the
    models idle. It now runs beside the run; what the run commits and removes meanwhile (a
    photo changed since it was indexed) reaches the grown index once it is built."""
    from PIL import Image
    from skimage import data
    from sqlalchemy import select

    from usesearch.indexer import vector_files, vectors
    from usesearch.indexer.folder import open_store
    from usesearch.indexer.records import ImageRecord, SegmentRecord

    monkeypatch.setattr(growth.Build, "done", lambda self: not self._thread.is_alive())  # as in use
    photos, db = tmp_path / "photos", tmp_path / "db"
    photos.mkdir()

    def save(name: str, picture: str) -> None:
        image = Image.fromarray(getattr(data, picture)())
        image.thumbnail((96, 96))
        image.save(photos / f"{name}.png")

    save("a", "astronaut")
    save("b", "chelsea")
    index_paths([photos], db, IndexOptions(**OPTS))
    store = open_store(db, None)
    with store.sessions() as s:
        image = select(ImageRecord.id).where(ImageRecord.path.like("%/b.png"))
        old_b = set(s.scalars(select(SegmentRecord.id).where(SegmentRecord.image_id.in_(image))))
    store.close()
    assert old_b
    save("a2", "coffee")  # the walk's order: a (done), a2 (outgrows: the build starts), b, c, d
    save("b", "coins")  # changed: its old segments leave the store while the index is built
    save("c", "rocket")
    save("d", "camera")
    real_rebuild, during = vectors.rebuild, []

    def after_b_is_replaced(store, dim, factory, device, shard_size, up_to, stop):
        deadline = time.monotonic() + 60
        while old_b & set(store.segment_ids().tolist()) and time.monotonic() < deadline:
            time.sleep(0.02)
        during.append((store.max_segment_id() - up_to, bool(old_b & set(store.segment_ids().tolist()))))
        return real_rebuild(store, dim, factory, device, shard_size, up_to, stop)

    real_write, written = vector_files.write_index_files, []

    def recorded(index, *args, **kwargs):
        written.append((index.exact, set(index.ids().tolist())))
        return real_write(index, *args, **kwargs)

    monkeypatch.setattr(vectors, "rebuild", after_b_is_replaced)
    monkeypatch.setattr(vector_files, "write_index_files", recorded)
    assert index_paths([photos], db, IndexOptions(**OPTS, faiss_every_s=0)).done == 4
    assert during and during[0][0] > 0 and not during[0][1]  # b committed (old ids gone) as it was built
    ix = SegmentIndex.open(db)
    committed = set(ix.store.segment_ids().tolist())
    grown = [ids for exact, ids in written if not exact]
    assert ix.info.factory == "IVF4,Flat" and grown[-1] == committed and not old_b & grown[-1]
    assert not [t for t in threading.enumerate() if t.name == "usesearch-index-growth"]


def test_index_grows_out_of_exact_search_by_itself(tmp_path, monkeypatch, caplog, small_growth):
    photos = write_photos(tmp_path / "photos", ("astronaut",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert SegmentIndex.open(tmp_path / "db").info.factory == "IDMap2,Flat"
    write_photos(photos, ("chelsea", "coffee", "rocket"))
    # The grown index's file cannot be written (a full disk): the old factory stays on record
    # beside the old file, so the next run grows the index again instead of staying exact.
    from usesearch.errors import DiskFullError
    from usesearch.indexer import vector_files

    real_write, writes, written = vector_files.write_index_files, [], []

    def full_once_grown(index, *args, **kwargs):
        if not index.exact and not writes:
            writes.append(1)
            raise OSError(28, "No space left on device")
        written.append((index.exact, index.ntotal))
        return real_write(index, *args, **kwargs)

    monkeypatch.setattr(vector_files, "write_index_files", full_once_grown)
    with pytest.raises(DiskFullError):
        index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert writes and SegmentIndex.open(tmp_path / "db").info.factory == "IDMap2,Flat"
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    ix = SegmentIndex.open(tmp_path / "db")
    assert ix.info.factory == "IVF4,Flat" and ix.index.ntotal == len(ix.store.segment_ids())
    assert any("segments no longer suit" in r.getMessage() for r in caplog.records)
    fixed = tmp_path / "fixed"
    index_paths([photos], fixed, IndexOptions(**{**OPTS, "factory": "IDMap2,Flat"}))
    # A type to train cannot start a new index (it would train on the first photo, or fail
    # on it and leave a folder no run opens); another type than an index has is refused too.
    from usesearch.errors import UsesearchError

    with pytest.raises(UsesearchError, match="IVF16,Flat must be trained .* reindex --db"):
        index_paths([photos], tmp_path / "ivf", IndexOptions(**{**OPTS, "factory": "IVF16,Flat"}))
    assert not (tmp_path / "ivf").exists()  # refused before its folder was made
    written.clear()
    assert index_paths([photos], tmp_path / "ivf", IndexOptions(**OPTS, faiss_every_s=0)).done == 4  # usable
    # Grown at a periodic write during the run, not only at its end (a long first run
    # would hold every vector exactly until then); a new index has shards of SHARD_SIZE ids.
    grown, ivf = [n for exact, n in written if not exact], SegmentIndex.open(tmp_path / "ivf")
    assert grown and grown[0] < ivf.index.ntotal and ivf.info.factory == "IVF4,Flat"
    assert ivf.info.shard_size == index_choice.SHARD_SIZE
    with pytest.raises(UsesearchError, match="this index is IDMap2,Flat \\(fixed\\); .*reindex"):
        index_paths([photos], fixed, IndexOptions(**{**OPTS, "factory": "HNSW32"}))
    assert (
        SegmentIndex.open(fixed).info.index_mode == "fixed" and SegmentIndex.open(fixed).info.factory == "IDMap2,Flat"
    )
    # The type it has, spelled another way, is that type (it was refused as another, and the
    # suggested reindex rebuilt the same): every photo is already there.
    assert index_paths([photos], fixed, IndexOptions(**{**OPTS, "factory": "Flat"})).skipped == 4
    assert not index_kinds.same_kind(64, "NSG32,Flat", "Flat")  # a type refused today (an older index's): another
    # A type chosen by hand, undone: `reindex --factory auto` (it was an invalid factory,
    # and no flag gave the automatic choice back); a type too big to train, refused in our words.
    with pytest.raises(ValueError, match="trains 4096 clusters, on at least as many vectors.*--factory auto"):
        reindex(fixed, "IVF4096,PQ8")
    reindex(fixed, "auto")
    again = SegmentIndex.open(fixed)
    chosen = index_choice.choose(again.index.ntotal, again.info.dim).factory
    assert (again.info.index_mode, again.info.factory) == ("auto", chosen) and again.index.ntotal > 0


def test_an_index_on_postgresql_grows_and_shrinks_its_type(tmp_path, pg_url, small_growth):
    """Each run that grew a PostgreSQL index failed at its end in the server's words
    ("integer out of range": the catch-up asked for segment ids up to 2**62, past its
    INTEGER id column), and so did the prune that shrank it back."""
    from usesearch.indexer.maintenance import prune

    photos, db = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee")), tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS, db_url=pg_url, faiss_every_s=0))
    ix = SegmentIndex.open(db, db_url=pg_url)
    assert ix.info.factory == "IVF4,Flat" and sorted(ix.index.ids()) == sorted(ix.store.segment_ids())
    ix.close()
    for photo in [*photos.glob("*.png"), *photos.glob("*/*.png")][1:]:
        photo.unlink()
    prune(db, options=IndexOptions(**OPTS, db_url=pg_url))
    ix = SegmentIndex.open(db, db_url=pg_url)
    assert ix.info.factory == "IDMap2,Flat" and sorted(ix.index.ids()) == sorted(ix.store.segment_ids())
    ix.close()


def test_a_server_restart_while_the_grown_index_is_built_is_waited_out(tmp_path, pg_url, small_growth, monkeypatch):
    """The build's reads (in its thread, and its catch-up in the writer's) were not
    retried as the writes are: a PostgreSQL restart during the build ended the run."""
    from sqlalchemy.exc import OperationalError

    from usesearch.indexer import vectors
    from usesearch.indexer.store import Store

    real_rebuild, real_between, builds, catch_ups = vectors.rebuild, Store.segment_ids_between, [], []
    restart = OperationalError("SELECT", {}, Exception("terminating connection due to administrator command"))

    def restarted_once(*args, **kwargs):
        builds.append(1)
        if len(builds) == 1:
            raise restart
        return real_rebuild(*args, **kwargs)

    def between(self, low, high):
        if high == 2**62:  # the catch-up's
            catch_ups.append(1)
            if len(catch_ups) == 1:
                raise restart
        return real_between(self, low, high)

    monkeypatch.setattr(vectors, "rebuild", restarted_once)
    monkeypatch.setattr(Store, "segment_ids_between", between)
    photos, db = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee")), tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS, db_url=pg_url, faiss_every_s=0))
    ix = SegmentIndex.open(db, db_url=pg_url)
    assert ix.info.factory == "IVF4,Flat" and sorted(ix.index.ids()) == sorted(ix.store.segment_ids())
    assert len(builds) == 2 and len(catch_ups) == 2
    ix.close()


def test_ctrl_c_while_the_grown_index_is_written_leaves_the_files_the_catalog_names(
    tmp_path, monkeypatch, caplog, small_growth
):
    """Ctrl-C lands while a run writes the index it has just grown into: the run keeps
    what it committed, writing the index the catalog still names (it wrote the grown
    one under the old name, and every later open rebuilt it from the database)."""
    from usesearch.indexer import vector_files

    real_write, interrupted = vector_files.write_index_files, []

    def ctrl_c_once_grown(index, *args, **kwargs):
        if not index.exact and not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt
        return real_write(index, *args, **kwargs)

    monkeypatch.setattr(vector_files, "write_index_files", ctrl_c_once_grown)
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))  # 24 segments
    assert index_paths([photos], tmp_path / "db", IndexOptions(**OPTS)).interrupted and interrupted
    caplog.clear()
    ix = SegmentIndex.open(tmp_path / "db")
    assert ix.info.factory == "IDMap2,Flat" and ix.index.exact and ix.index.ntotal == len(ix.store.segment_ids())
    assert not [r for r in caplog.records if "does not match" in r.getMessage()]


def test_a_reader_follows_its_writer_into_a_regrown_index_and_a_new_calibration(tmp_path, small_growth):
    """A server opened on an exact index kept adding to it after the writer had grown the
    index into an IVF (every vector in memory, every search a scan), and kept the search
    effort it read at open after a `recalibrate`. It now loads what the writer wrote."""
    from usesearch.indexer import calibration
    from usesearch.indexer.maintenance import recalibrate

    photos, db = write_photos(tmp_path / "photos", ("astronaut",)), tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    reader = SegmentIndex.open(db)
    assert reader.index.exact and reader.calibration is None
    write_photos(photos, ("chelsea", "coffee", "rocket"))
    index_paths([photos], db, IndexOptions(**OPTS))  # grown into IVF4,Flat, and calibrated
    hits = reader.query("a cat", k=5)
    fresh = SegmentIndex.open(db)
    assert (reader.info.factory, reader.index.exact) == ("IVF4,Flat", False)
    assert reader.index.ntotal == len(reader.store.segment_ids()) == fresh.index.ntotal
    assert [h.segment_id for h in hits] == [h.segment_id for h in fresh.query("a cat", k=5)]
    assert reader.calibration is not None and reader.calibration == fresh.calibration
    again = recalibrate(db, recall_target=0.5, text_queries=False)  # another target: another file
    reader.query("a cat", k=5)
    assert reader.calibration == again == calibration.load(db, reader.index) and reader.calibration.target == 0.5
    # Retrained under the same factory (more photos, then `reindex`): the new calibration
    # measured the files' index, which the reader loads with it.
    write_photos(photos, ("coins",))
    index_paths([photos], db, IndexOptions(**OPTS))
    held = calibration.trained_fingerprint(reader.index)
    reindex(db, "IVF4,Flat", text_queries=False)
    reader.query("a cat", k=5)
    assert calibration.trained_fingerprint(reader.index) != held and reader.calibration is not None
    assert reader.calibration == calibration.load(db, SegmentIndex.open(db).index)


def test_a_reader_between_the_writers_files_and_its_records_follows_it_all_the_same(
    tmp_path, monkeypatch, caplog, small_growth
):
    """The writer writes a regrown index's files, then records their checksums, then its
    type. A reader searching between the files and the type saw nothing to follow and
    kept its exact index for good; one loading the files before their checksums were
    recorded rebuilt the whole index from the catalog, every search waiting. Now the type
    on record is also read every TYPE_CHECK_S, and files not yet recorded are loaded later."""
    from usesearch.indexer import freshness
    from usesearch.indexer.store import Store

    monkeypatch.setattr(freshness, "TYPE_CHECK_S", 0.0)  # (30 s in use)
    photos, db = write_photos(tmp_path / "photos", ("astronaut",)), tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    early, late = SegmentIndex.open(db, locations="background"), SegmentIndex.open(db)
    real_type, real_sum = Store.set_factory, Store.set_vectors_checksum
    monkeypatch.setattr(Store, "set_factory", lambda self, *a: (early.query("a cat", k=5), real_type(self, *a))[1])
    write_photos(photos, ("chelsea", "coffee", "rocket"))
    index_paths([photos], db, IndexOptions(**OPTS))  # grown into IVF4,Flat
    assert early.index.exact  # it searched between the files and the type on record
    early.query("a cat", k=5)
    assert (early.info.factory, early.index.exact) == ("IVF4,Flat", False) and early._locations is not None
    monkeypatch.setattr(Store, "set_factory", real_type)
    # `late` still holds the exact index; the next run's write renames a file into place and
    # `late` searches before its checksum is recorded: no rebuild, the files loaded after.
    monkeypatch.setattr(
        Store, "set_vectors_checksum", lambda self, *a: (late.query("a cat", k=5), real_sum(self, *a))[1]
    )
    write_photos(photos, ("coins",))
    with caplog.at_level("WARNING"):
        index_paths([photos], db, IndexOptions(**OPTS))
    assert not [r for r in caplog.records if "does not match the database" in r.getMessage()]
    assert late.index.exact
    late.query("a cat", k=5)
    assert (late.info.factory, late.index.ntotal) == ("IVF4,Flat", len(late.store.segment_ids()))


def test_ctrl_c_while_the_run_waits_for_the_grown_index_stops_its_build(monkeypatch):
    """Ctrl-C lands while a run's end waits for the index being built: the build is
    told to stop (it went on reading, training and filling an index nobody would use
    after ``index_paths`` had returned)."""
    import signal
    from types import SimpleNamespace

    from usesearch.indexer import vectors

    told_to_stop = threading.Event()

    def build_until_stopped(store, dim, factory, device, shard_size, up_to, stop):
        if stop.wait(30):
            told_to_stop.set()
        raise vectors.BuildStopped

    monkeypatch.setattr(vectors, "rebuild", build_until_stopped)
    monkeypatch.setattr(growth, "Store", lambda *args, **kwargs: SimpleNamespace(close=lambda: None))
    store = SimpleNamespace(max_segment_id=lambda: 7, url="sqlite://", folder=None)
    run_growth = growth.Growth()
    run_growth.build = growth.Build(store, SimpleNamespace(dim=8, shard_size=0), "IVF4,Flat", "cpu")
    # A real SIGINT to the main thread: a simulated one waits for the join to end.
    threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        run_growth.poll(None, None, store, "db", wait=True)  # type: ignore[arg-type]
    run_growth.stop()  # as the writer's ``__exit__`` does
    assert told_to_stop.wait(5)
