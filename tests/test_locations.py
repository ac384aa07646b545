"""The in-memory map of where each segment's embedding lies answers as the catalog
does, stays right through appends, deletions and compaction (which re-points rows and
deletes chunks), falls back to the catalog for any id it does not hold, and a
compressed index searching through it returns what it returns through the catalog."""

import numpy as np
import pytest
from sqlalchemy import delete, insert, update

import usesearch.indexer.embeddings as embeddings
from tests.test_index_scale import synthetic_index
from usesearch.indexer import SegmentIndex, reindex
from usesearch.indexer.folder import open_store
from usesearch.indexer.locations import LocationMap
from usesearch.indexer.maintenance import compact
from usesearch.indexer.records import IndexInfo, SegmentRecord

FACTORY = "IVF32,PQ16x4fs"
CHUNK_ROWS = 1000


@pytest.fixture
def compressed(tmp_path, monkeypatch):
    """A 3,000-segment compressed index over three 1,000-row chunk files."""
    monkeypatch.setattr(embeddings, "CHUNK_ROWS", CHUNK_ROWS)
    data = synthetic_index(tmp_path / "db", n=3000, dim=32, images=50)
    reindex(tmp_path / "db", FACTORY, text_queries=False)
    return tmp_path / "db", data


def catalog_locations(store, ids) -> dict[int, tuple[int, int]]:
    return {int(i): (int(c), int(r)) for i, c, r in store.segment_locations(ids)}


def as_dict(found: np.ndarray) -> dict[int, tuple[int, int]]:
    assert len(found) == len({int(i) for i in found[:, 0]}), "an id came back twice"
    return {int(i): (int(c), int(r)) for i, c, r in found}


def add_segments(store, data: np.ndarray, first_id: int) -> np.ndarray:
    """Append rows and commit their segments (as the writer does: one generation)."""
    chunks, rows = store.files().append(data)
    ids = np.arange(first_id, first_id + len(data))
    with store.sessions.begin() as s:
        s.execute(
            insert(SegmentRecord),
            [
                dict(
                    id=int(i), image_id=1, x=0, y=0, w=1, h=1, area=5, rle_counts="11", vec_chunk=int(c), vec_row=int(r)
                )
                for i, c, r in zip(ids, chunks, rows)
            ],
        )
        s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
    return ids


def test_map_answers_as_the_catalog(compressed):
    db, _ = compressed
    store = open_store(db, None, read_only=True)
    ids = np.random.default_rng(0).permutation(np.arange(1, 3001))[:700]
    held = LocationMap(store)
    assert not held.ready
    held.sync()
    assert held.ready and held.nbytes == 6 * len(held._chunk) and len(held._chunk) >= 3001
    assert as_dict(held.lookup(ids)) == catalog_locations(store, ids)
    assert {c for c, _ in catalog_locations(store, ids).values()} == {0, 1, 2}  # three chunks exercised


def test_map_keeps_in_step_with_appends_deletions_and_compaction(compressed, monkeypatch):
    db, data = compressed
    reader = open_store(db, None, read_only=True)
    held = LocationMap(reader)
    held.sync()
    writer = open_store(db, None)
    # Appends: new ids above every id seen.
    new = add_segments(writer, data[:500], 3001)
    held.sync()
    asked = np.concatenate([new, np.arange(1, 3001, 7)])
    monkeypatch.setattr(reader, "segment_locations", lambda ids: pytest.fail("the map should hold every id"))
    assert as_dict(held.lookup(asked)) == catalog_locations(writer, asked)
    monkeypatch.undo()
    # Deletions, then compaction: chunk 0 dies whole, chunk 1 keeps 400 rows, which move to the end.
    with writer.sessions.begin() as s:
        s.execute(delete(SegmentRecord).where(SegmentRecord.id <= 1600))
        s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
    report = compact(writer, dead_share=0.5)
    assert report.chunks_removed == 2 and report.rows_moved == 400
    moved = np.arange(1601, 2001)
    assert {c for c, _ in catalog_locations(writer, moved).values()} >= {3}  # re-pointed past the old chunks
    held.sync()
    live = np.arange(1601, 3501)
    assert as_dict(held.lookup(live)) == catalog_locations(writer, live)


def test_ids_the_map_lacks_come_from_the_catalog(compressed):
    db, data = compressed
    store = open_store(db, None)
    held = LocationMap(store)
    held.sync()
    new = add_segments(store, data[:10], 3001)  # committed after the map was built, not synced
    asked = np.concatenate([new, [5, 2999]])
    assert as_dict(held.lookup(asked)) == catalog_locations(store, asked)


@pytest.mark.parametrize("locations", ["memory", "background"])
def test_search_through_the_map_equals_search_through_the_catalog(compressed, locations):
    db, data = compressed
    by_catalog = SegmentIndex.open(db)
    by_map = SegmentIndex.open(db, locations=locations)
    if locations == "background":
        by_map._locations.sync()  # (waits for the thread's build: syncs are serialised)
    assert by_map._locations.ready and by_catalog._locations is None
    for row in np.random.default_rng(1).integers(0, len(data), 20):
        a, b = by_catalog.search_vector(data[row], 10), by_map.search_vector(data[row], 10)
        assert [h.segment_id for h in a] == [h.segment_id for h in b] and len(a) == 10
        assert [h.score for h in a] == [h.score for h in b]


def test_a_search_after_a_commit_sees_the_new_segments_through_the_map(compressed):
    db, data = compressed
    ix = SegmentIndex.open(db, locations="memory")
    writer = open_store(db, None)
    query = -data[0]  # far from every stored vector: only what is added near it can answer
    added = add_segments(writer, np.repeat(query[None], 3, 0), 3001)
    hits = ix.search_vector(query, 3)
    assert {h.segment_id for h in hits} == set(added.tolist())
    assert ix._locations._largest == int(added[-1])  # learnt by the map, not only by the fallback


def test_exact_index_and_bad_spelling(tmp_path):
    synthetic_index(tmp_path / "db", n=500, dim=16)
    assert SegmentIndex.open(tmp_path / "db", locations="memory")._locations is None  # exact: nothing re-scored
    with pytest.raises(ValueError, match="locations must be one of"):
        SegmentIndex.open(tmp_path / "db", locations="ram")
