"""The index's answers stay true: an index type without remove_ids (HNSW) through changed photos
and vectors that never committed, a vector file that does not match the database rebuilt from it,
and a filtered search equal to the filtered exact search over the store."""

import logging

import faiss
import numpy as np

from tests.helpers import OPTS, assert_consistent, write_photos
from tests.test_index_integrity import change_photo, runner
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths, reindex
from usesearch.indexer.folder import FAISS_FILE


def search(ix, vector, k, exclude=frozenset(), **filters):
    """``search_vector`` with its filters given as keywords, beside ``exact_hits``."""
    return ix.search_vector(vector, k, SearchFilters(**filters), exclude=exclude)


def exact_hits(ix, vector, k, path=None, min_area=0, per_image=False, exclude=()):
    """Brute force over the store: what any index must answer for these filters."""
    import fnmatch

    ids, vecs = zip(*ix.store.embeddings())
    ids, vecs = np.concatenate(ids), np.concatenate(vecs)
    rows = ix.store.rows(ids.tolist())
    order = np.argsort(-(vecs @ vector), kind="stable")
    out, seen = [], set()
    for i in order:
        row = rows[int(ids[i])]
        if row.id in exclude or row.area < min_area or (path and not fnmatch.fnmatchcase(row.image_path, path)):
            continue
        if per_image and row.image_id in seen:
            continue
        seen.add(row.image_id)
        out.append(row.id)
    return out[:k]


# -- 1. index types without remove_ids --------------------------------------------------
def test_hnsw_index_keeps_working_through_changed_photos(tmp_path):
    photos = write_photos(tmp_path / "photos")
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    reindex(db, "HNSW32")
    change_photo(photos)
    change_photo(photos, "astronaut")
    report = index_paths([photos], db, IndexOptions(**{**OPTS, "factory": "HNSW32"}))
    assert (report.done, report.skipped, report.failed) == (2, 2, 0)
    ix = SegmentIndex.open(db)
    committed = set(ix.store.segment_ids().tolist())
    hits = ix.query("a cat", k=len(committed) + 10)
    assert {h.segment_id for h in hits} == committed  # every live segment, nothing stale
    assert ix.stats()["vectors"] == len(committed)
    assert_consistent(db)
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output


def test_hnsw_reader_excludes_uncommitted_vectors_it_cannot_remove(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**{**OPTS, "factory": "HNSW16"}))
    ix = SegmentIndex.open(db)
    vector = ix.index.index.reconstruct(int(ix.store.segment_ids()[0]))
    ix.index.add(np.array([10**9]), vector[None])  # a vector whose image never committed
    from usesearch.indexer.vector_files import write_index_files

    write_index_files(ix.index, db / FAISS_FILE, ix.store, ix.info.dim, ix.info.factory, in_sync=False)
    reader = SegmentIndex.open(db)
    assert 10**9 not in {h.segment_id for h in reader.search_vector(vector, k=50)}
    assert reader.index.ntotal == len(reader.store.segment_ids())


# -- 2. the vector file is checked against the database ---------------------------------
def _rewrite(db, index):
    faiss.write_index(index, str(db / FAISS_FILE))


def test_corrupt_or_foreign_vector_files_are_rebuilt_from_the_database(small_index, caplog):
    photos, db = small_index
    ix = SegmentIndex.open(db)
    expected = [(h.segment_id, round(h.score, 5)) for h in ix.query("a cat", k=8)]
    ids, vecs = zip(*ix.store.embeddings())
    ids, vecs = np.concatenate(ids), np.concatenate(vecs)

    def l2_index():  # valid FAISS file, same ids, wrong metric
        index = faiss.index_factory(ix.info.dim, "IDMap2,Flat", faiss.METRIC_L2)
        index.add_with_ids(vecs, ids)
        return index

    def plain_index():  # valid FAISS file of another type
        index = faiss.IndexFlatIP(ix.info.dim)
        index.add(vecs)
        return index

    raw = (db / FAISS_FILE).read_bytes()
    flipped = bytearray(raw)
    middle = len(raw) // 2
    flipped[middle : middle + 64] = b"\x7f" * 64  # vectors, not the header: still a readable file
    corruptions = {
        "flipped": lambda: (db / FAISS_FILE).write_bytes(bytes(flipped)),
        "metric": lambda: _rewrite(db, l2_index()),
        "type": lambda: _rewrite(db, plain_index()),
    }
    for name, corrupt in corruptions.items():
        corrupt()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="usesearch"):
            got = [(h.segment_id, round(h.score, 5)) for h in SegmentIndex.open(db).query("a cat", k=8)]
        assert got == expected, name
        assert any("does not match the database" in r.getMessage() for r in caplog.records), name
    # Another index run repairs the file for good.
    index_paths([photos], db, IndexOptions(**OPTS))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usesearch"):
        assert [(h.segment_id, round(h.score, 5)) for h in SegmentIndex.open(db).query("a cat", k=8)] == expected
    assert not caplog.records


# -- 6. filters resolved in the database ------------------------------------------------------------
def test_filtered_search_equals_filtered_exact_search_and_a_filter_matching_nothing_costs_nothing(
    small_index, monkeypatch
):
    _, db = small_index
    ix = SegmentIndex.open(db)
    vector = ix.model.embed_text(["a cat"])[0]
    areas = sorted(r.area for r in ix.store.rows(ix.store.segment_ids()).values())
    some = int(ix.store.segment_ids()[3])
    import usesearch.indexer.selection

    for share in (1.0, 0.0):  # the glob as a FAISS id selection, then checked on candidates
        monkeypatch.setattr(usesearch.indexer.selection, "PUSHDOWN_SHARE", share)
        for filters in (
            dict(path="*/sub/*"),
            dict(min_area=areas[len(areas) // 2]),
            dict(per_image=True),
            dict(path="*/sub/*", per_image=True, min_area=areas[3]),
            dict(exclude={some}),
            dict(path="*/sub/*", exclude={some}, min_area=areas[5]),
        ):
            got = [h.segment_id for h in search(ix, vector, 5, **filters)]
            assert got == exact_hits(ix, vector, 5, **filters), (share, filters)
            assert got, filters
    fetched = []
    real_rows = ix.store.rows
    monkeypatch.setattr(ix.store, "rows", lambda ids: fetched.append(len(ids)) or real_rows(ids))
    assert ix.search_vector(vector, 5, SearchFilters(path="*/nomatch/*")) == []
    assert sum(fetched) == 0


def test_a_per_image_search_on_a_compressed_index_keeps_the_recall_of_one_per_segment(tmp_path, monkeypatch):
    """Per image, the top 10 photos lie deeper than the top 10 segments calibration
    measures: an image whose best segment sat in a cluster not visited lost its place,
    or showed a worse segment (recall@10 0.87 per image where `info` said 1.00). Such a
    search widens until its hits stop changing, as a filtered one does."""
    from tests.test_index_scale import synthetic_index
    from usesearch.indexer import index_choice

    monkeypatch.setattr(index_choice, "EXACT_UP_TO", 5_000)
    monkeypatch.setattr(index_choice, "nlist_for", lambda n: 64)
    monkeypatch.setattr(index_choice, "pq_m", lambda dim, bits=8: 8)
    data = synthetic_index(tmp_path / "db", n=10_000).astype(np.float16).astype(np.float32)
    reindex(tmp_path / "db")
    ix = SegmentIndex.open(tmp_path / "db")
    assert not ix.index.exact
    image = np.arange(len(data)) % 200  # (synthetic_index's photos)
    rng = np.random.default_rng(1)
    recalls = []
    for row in rng.integers(0, len(data), 40):
        q = data[row] + 0.3 * rng.standard_normal(data.shape[1]).astype(np.float32)
        q /= np.linalg.norm(q)
        best: dict[int, int] = {}  # the exact answer: each photo's best segment, the 10 best photos
        for i in np.argsort(-(data @ q), kind="stable"):
            best.setdefault(int(image[i]), int(i) + 1)
            if len(best) == 10:
                break
        hits = search(ix, q, 10, per_image=True)
        assert len({h.image_id for h in hits}) == len(hits) == 10
        recalls.append(len(set(best.values()) & {h.segment_id for h in hits}) / 10)
    ix.close()
    assert np.mean(recalls) >= 0.95, recalls
