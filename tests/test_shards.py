"""A sharded index (``--shard-size``) answers every query exactly as one index with the
same contents, with and without filters; its shards share one trained quantizer, a
write rewrites only the shards that changed, and a damaged shard is rebuilt."""

import hashlib
import shutil

import numpy as np
import pytest

import usesearch.indexer.index_choice as index_choice
from tests.helpers import OPTS, assert_consistent, write_photos
from tests.test_index_scale import synthetic_index
from usesearch.errors import UsesearchError
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths, reindex
from usesearch.indexer.folder import FAISS_FILE
from usesearch.indexer.vector_files import shard_files, shard_path


def answers(ix: SegmentIndex, queries: np.ndarray) -> list:
    out = []
    for q in queries:
        for filters in (
            {},
            {"path": "/a/3/*"},
            {"path": "/a/[1-7]/*"},
            {"min_area": 90},
            {"min_area": 5},
            {"per_image": True},
            {"exclude": {5, 17}},
            {"nprobe": 8, "rerank": 300},
        ):
            exclude = filters.pop("exclude", frozenset())
            hits = ix.search_vector(q, 15, SearchFilters(**filters), exclude=exclude)
            out.append([(h.segment_id, round(h.score, 5)) for h in hits])
    return out


@pytest.mark.parametrize("compressed", [False, True], ids=["exact", "ivf-pq"])
def test_sharded_index_answers_as_one_index(tmp_path, monkeypatch, compressed):
    if compressed:
        monkeypatch.setattr(index_choice, "EXACT_UP_TO", 5_000)
        monkeypatch.setattr(index_choice, "nlist_for", lambda n: 32)
        monkeypatch.setattr(index_choice, "pq_m", lambda dim, bits=8: 8)
    data = synthetic_index(tmp_path / "one", n=8_000)
    shutil.copytree(tmp_path / "one", tmp_path / "four")
    reindex(tmp_path / "one")
    reindex(tmp_path / "four", shard_size=2_000)
    one, four = SegmentIndex.open(tmp_path / "one"), SegmentIndex.open(tmp_path / "four")
    assert len(one.index.shards) == 1 and len(four.index.shards) == 4 == len(
        shard_files(tmp_path / "four" / FAISS_FILE)
    )
    assert four.stats()["shards"] == 4 and four.index.exact == (not compressed)
    if compressed:  # one trained quantizer and codebook for all shards
        import faiss

        centroids = [
            faiss.vector_to_array(faiss.downcast_index(faiss.extract_index_ivf(s).quantizer).codes)
            for s in four.index.shards
        ]
        assert all(np.array_equal(c, centroids[0]) for c in centroids)
    queries = data[np.random.default_rng(0).integers(0, len(data), 6)]
    assert answers(four, queries) == answers(one, queries)
    assert all(len(a) for a in answers(four, queries[:1]))


def test_sharded_index_grows_by_rewriting_only_its_last_shard(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS, shard_size=10))
    files = shard_files(db / FAISS_FILE)
    assert len(files) >= 2
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    write_photos(photos, ("rocket",))
    index_paths([photos], db, IndexOptions(**OPTS))  # the shard size is the index's own from now on
    after = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in shard_files(db / FAISS_FILE)}
    unchanged = [name for name in before if before[name] == after.get(name)]
    assert unchanged == list(before)[:-1]  # all but the last (partly filled) shard kept as they were
    last = list(before)[-1]
    assert len(after) > len(before) or after[last] != before[last]
    assert_consistent(db)
    ix = SegmentIndex.open(db)
    reference = ix.query("a rocket", k=8)
    ix.close()
    (db / FAISS_FILE).write_bytes(b"damaged")  # shard 0
    ix = SegmentIndex.open(db)
    assert [h.segment_id for h in ix.query("a rocket", k=8)] == [h.segment_id for h in reference]
    ix.close()
    reindex(db, shard_size=0)  # back to one shard: the extra files go
    assert shard_files(db / FAISS_FILE) == [db / FAISS_FILE]
    assert_consistent(db)


def test_re_laying_an_index_removes_the_shard_files_past_a_gap(tmp_path):
    """A deleted shard file ends the run of files an open reads (its segments and those
    after it come from the database). Re-laying the index removed the old layout's files
    only up to that gap: vectors-0006..0012 stayed on disk for good, and `info` counted
    neither their bytes nor them."""
    db, path = tmp_path / "db", tmp_path / "db" / FAISS_FILE
    data = synthetic_index(db, n=120, dim=16, images=12)

    def on_disk() -> list[str]:
        return sorted(p.name for p in db.glob("vectors*.faiss"))

    def top(ix: SegmentIndex) -> list:
        return [[h.segment_id for h in ix.search_vector(data[i], 5)] for i in (3, 47, 115)]

    reindex(db, shard_size=10, text_queries=False)
    assert len(shard_files(path)) == 12
    expected = top(SegmentIndex.open(db))
    shard_path(path, 5).unlink()
    ix = SegmentIndex.open(db)
    stats = ix.stats(check_files=True)
    assert stats["faiss_files_unread"] == 6  # 0006..0012: not read, yet on disk
    assert stats["bytes_faiss"] == sum(p.stat().st_size for p in db.glob("vectors*.faiss"))
    assert top(ix) == expected
    ix.close()
    reindex(db, shard_size=40, text_queries=False)  # 3 shards: 0001 and 0002 rewritten, the rest gone
    assert on_disk() == ["vectors-0001.faiss", "vectors-0002.faiss", "vectors.faiss"]
    ix = SegmentIndex.open(db)
    assert ix.stats(check_files=True)["faiss_files_unread"] == 0 and top(ix) == expected
    ix.close()
    shard_path(path, 1).unlink()
    reindex(db, shard_size=0, text_queries=False)
    assert on_disk() == ["vectors.faiss"]
    # Files an older usesearch left past a gap: any write of the index takes them back
    # (`reindex`, and `index` and `prune` through the same write), never a file in use.
    shutil.copy(path, shard_path(path, 3))
    assert SegmentIndex.open(db).stats(check_files=True)["faiss_files_unread"] == 1
    (db / "vectors-03.faiss").write_bytes(b"not a shard file")  # not a name of the layout: left alone
    reindex(db, text_queries=False)
    assert on_disk() == ["vectors-03.faiss", "vectors.faiss"]
    assert top(SegmentIndex.open(db)) == expected
    assert_consistent(db)


def test_a_reindex_killed_before_recording_its_factory_or_layout_is_read_as_recorded(tmp_path, monkeypatch, caplog):
    """The new files are written before the catalog records their factory and shard
    size: a kill between left IVF files trusted as the recorded exact index (searches
    silently approximate), or every open warning of a shard 'missing' that was there."""
    import logging

    from usesearch.indexer.store import Store

    data = synthetic_index(tmp_path / "db", n=3000, dim=32)
    reindex(tmp_path / "db", "IDMap2,Flat", text_queries=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the kill, just after the files were written

    monkeypatch.setattr(Store, "set_factory", killed)
    with pytest.raises(KeyboardInterrupt):
        reindex(tmp_path / "db", "IVF16,Flat", text_queries=False)
    monkeypatch.undo()
    ix = SegmentIndex.open(tmp_path / "db")
    assert ix.info.factory == "IDMap2,Flat" and ix.index.exact  # as recorded: exact, never silently approximate
    top = ix.search_vector(data[7], 5)
    assert top[0].segment_id == 8 and len(top) == 5
    ix.close()
    monkeypatch.setattr(Store, "set_shard_size", killed)
    with pytest.raises(KeyboardInterrupt):
        reindex(tmp_path / "db", shard_size=1000, text_queries=False)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        ix = SegmentIndex.open(tmp_path / "db")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "is laid out in other shards than the index's" in said and "usesearch reindex" in said
    assert "is missing" not in said
    assert ix.search_vector(data[7], 5)[0].segment_id == 8
    ix.close()
    # A typo (2 for 2M) would lay 3,000 segments out in 1,500 files: refused, nothing rewritten.
    before = sorted(p.name for p in (tmp_path / "db").iterdir())
    with pytest.raises(UsesearchError, match="--shard-size 2 would lay this index's 3,000 segment ids out in 1,500 "):
        reindex(tmp_path / "db", shard_size=2, text_queries=False)
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == before


def test_deferred_adds_answer_as_adds_made_at_once(tmp_path, monkeypatch):
    """A writer's commits add a photo's vectors with ``defer``: they go into FAISS a
    batch at a time (an IVF fast-scan add costs about as much for 100 vectors as for
    1,000), and every read of the shards (a search, a count, a write, a removal) sees
    them first, so the index answers and is written as one whose adds went in at once."""
    import faiss

    from usesearch.indexer import index_kinds, vectors

    monkeypatch.setattr(vectors, "DEFERRED_ADDS", 300)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    trained = index_kinds.new_index(16, "IVF8,PQ4x4fs")
    trained.train(data)
    at_once, deferred = (vectors.Vectors(faiss.clone_index(trained), shard_size=400) for _ in range(2))
    for start in range(0, 1000, 100):  # a photo's 100 at a time
        ids = np.arange(start + 1, start + 101)
        at_once.add(ids, data[start : start + 100])
        deferred.add(ids, data[start : start + 100], defer=True)
    assert sum(int(s.ntotal) for s in deferred._shards) == 900  # the last 100 wait for a read
    assert deferred.ntotal == 1000 and sorted(deferred.ids()) == list(range(1, 1001))
    deferred.add(np.arange(1001, 1051), data[:50], defer=True)
    at_once.add(np.arange(1001, 1051), data[:50])
    deferred.remove(np.arange(1040, 1051))  # a removal of what is still deferred
    at_once.remove(np.arange(1040, 1051))
    for q in data[:20]:
        for nprobe in (None, 8):
            got, want = deferred.search(q, 10, nprobe=nprobe), at_once.search(q, 10, nprobe=nprobe)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_allclose(got[0], want[0])
    deferred.dirty.clear()  # as a write leaves it
    deferred.add(np.arange(1051, 1061), data[:10], defer=True)
    assert deferred.dirty == {2}  # read with its deferred adds in (ids 801-1200: shard 2), so written
    assert [int(s.ntotal) for s in deferred._shards] == [400, 400, 249]


def test_a_runs_commits_reach_faiss_in_batches(tmp_path, monkeypatch):
    """The writer's commits defer their adds for real: a check made on every commit (is
    the index trained?) read the shards and so added the last photo's vectors alone."""
    from usesearch.indexer import vectors

    monkeypatch.setattr(vectors, "DEFERRED_ADDS", 10**6)
    batches: list[int] = []
    real = vectors.Vectors.add_deferred

    def counted(self):
        if self._deferred:
            batches.append(self._deferred_rows)
        return real(self)

    monkeypatch.setattr(vectors.Vectors, "add_deferred", counted)
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee", "rocket"))
    report = index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    assert report.done == 4 and batches == [report.segments]  # one batch, at the run's write
    assert_consistent(tmp_path / "db")


def test_a_shard_emptied_by_prune_is_left_out_of_calibration(tmp_path, monkeypatch):
    """FAISS refuses a search for 0 results: a compressed sharded index whose photos of
    one shard were pruned failed every later calibration, so `prune`, `calibrate`,
    `reindex` and `index` all ended in an AssertionError."""
    from usesearch.indexer.maintenance import prune, recalibrate

    monkeypatch.setattr(index_choice, "EXACT_UP_TO", 5_000)
    monkeypatch.setattr(index_choice, "nlist_for", lambda n: 32)
    monkeypatch.setattr(index_choice, "pq_m", lambda dim, bits=8: 8)
    db = tmp_path / "db"
    data = synthetic_index(db, n=8_000, images=80, image_of=lambda clusters: np.arange(len(clusters)) // 100)
    reindex(db, shard_size=2_000)
    gone = [f"/a/{i % 10}/{i}.jpg" for i in range(19, 41)]  # segments 1,900-4,099: the second shard whole
    assert prune(db, gone, IndexOptions(), force=True).images_removed == 22
    with SegmentIndex.open(db) as ix:
        assert 0 in [shard.ntotal for shard in ix.index.shards]
    recalibrate(db)
    with SegmentIndex.open(db) as ix:
        assert ix.calibration is not None and ix.search_vector(data[5_000], 3)[0].segment_id == 5_001
