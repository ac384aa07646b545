"""Compaction of the embedding files: removed segments' rows give their disk back,
every live segment keeps the same vector bits and answers, and an interruption at any
point leaves a consistent index that a re-run finishes."""

import numpy as np
import pytest

import usesearch.indexer.embeddings as embeddings
import usesearch.indexer.maintenance as compact_mod
from tests.helpers import assert_consistent
from tests.test_index_scale import synthetic_index
from usesearch.indexer import SegmentIndex, reindex
from usesearch.indexer.folder import db_url_for
from usesearch.indexer.leftovers import dead_bytes
from usesearch.indexer.maintenance import compact
from usesearch.indexer.store import Store

N, IMAGES, CHUNK = 3_000, 300, 500


@pytest.fixture()
def pruned(tmp_path, monkeypatch):
    """An index in 6 chunks of 500 rows, with 60% of its images removed."""
    monkeypatch.setattr(embeddings, "CHUNK_ROWS", CHUNK)
    db = tmp_path / "db"
    synthetic_index(db, n=N, dim=16, images=IMAGES)
    reindex(db)
    store = Store(db_url_for(db, None), folder=db)
    assert store.files().chunks() == list(range(N // CHUNK))
    for image_id in range(1, IMAGES + 1):
        if image_id % 5 < 3:
            store.remove_image(image_id)
    reindex(db)  # the FAISS file as a prune leaves it
    yield db, store
    store.close()


def vectors_by_id(store: Store) -> dict[int, bytes]:
    return {int(i): v.astype(np.float16).tobytes() for ids, vs in store.embeddings() for i, v in zip(ids, vs)}


def test_compaction_gives_back_dead_rows_and_keeps_every_vector(pruned):
    db, store = pruned
    before, dead = vectors_by_id(store), dead_bytes(store)
    row_bytes = store.files().row_bytes
    assert len(before) == N * 2 // 5 and dead == (N - len(before)) * row_bytes
    queries = np.random.default_rng(5).standard_normal((5, 16)).astype(np.float32)
    ix = SegmentIndex.open(db)
    answers = [[h.segment_id for h in ix.search_vector(q / np.linalg.norm(q), 20)] for q in queries]

    report = compact(store)
    # The 5 closed chunks (60% dead) are rewritten and deleted; the newest, being
    # appended to, is left alone; the copies fill the rest of it and a new chunk.
    assert report.chunks_removed == 5 and report.bytes_freed == 5 * CHUNK * row_bytes
    assert report.rows_moved == len(before) - CHUNK * 2 // 5
    assert 0 not in store.files().chunks() and not (db / "embeddings" / "chunk-000000.f16").exists()
    assert vectors_by_id(store) == before  # the same bits, for every live segment
    assert dead_bytes(store) == CHUNK * 3 // 5 * row_bytes  # only the newest chunk's dead rows remain
    assert [[h.segment_id for h in ix.search_vector(q / np.linalg.norm(q), 20)] for q in queries] == answers
    ix.close()
    assert_consistent(db)
    # The chunk that was newest is closed now: the next run moves its live rows too.
    assert compact(store).rows_moved == CHUNK * 2 // 5 and dead_bytes(store) == 0
    assert compact(store).rows_moved == 0 and vectors_by_id(store) == before


def test_an_interrupted_compaction_loses_nothing_and_a_rerun_finishes(pruned, monkeypatch):
    db, store = pruned
    before = vectors_by_id(store)
    monkeypatch.setattr(compact_mod, "MOVE_BATCH", 100)
    real, calls = compact_mod._point_at, []

    def dies_after_two_batches(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill between a batch's append and its commit
        calls.append(1)
        real(*args)

    monkeypatch.setattr(compact_mod, "_point_at", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        compact(store)
    assert vectors_by_id(store) == before and store.files().chunks()[0] == 0  # nothing deleted yet
    monkeypatch.setattr(compact_mod, "_point_at", real)
    report = compact(store)
    # The first run's appends closed the chunk that was newest, so it goes too.
    assert report.chunks_removed == 6 and 0 not in store.files().chunks() and vectors_by_id(store) == before
    # The rows the interrupted run appended but never committed are dead rows now, no more.
    files = store.files()
    assert dead_bytes(store) == files.bytes_on_disk() - len(before) * files.row_bytes
    assert_consistent(db)


def test_a_server_syncing_just_before_a_chunk_is_deleted_never_reads_the_deleted_chunk(pruned, monkeypatch):
    """A compressed index's server holds re-scored candidates' locations in memory. A
    sync between compaction's last re-pointing commit and a chunk's deletion kept
    the old locations, and with no new generation after the deletion, its searches
    read the deleted file until some later commit."""
    db, store = pruned
    reindex(db, "IVF8,Flat")
    queries = np.random.default_rng(6).standard_normal((5, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    before = SegmentIndex.open(db)
    answers = [[h.segment_id for h in before.search_vector(q, 20)] for q in queries]
    before.close()
    ix = SegmentIndex.open(db, locations="memory")  # no search yet: no chunk mapped before the deletions
    real_remove, synced = embeddings.EmbeddingFiles.remove, []

    def remove_after_a_sync(files, chunk):
        ix.refresh()  # a search arriving just before the unlink
        synced.append(chunk)
        return real_remove(files, chunk)

    monkeypatch.setattr(embeddings.EmbeddingFiles, "remove", remove_after_a_sync)
    assert compact(store).chunks_removed == 5 and len(synced) == 5
    assert [[h.segment_id for h in ix.search_vector(q, 20)] for q in queries] == answers
    ix.close()


def test_a_server_lets_go_of_the_chunks_a_compaction_deleted(pruned):
    """A reader's maps of deleted chunks kept their blocks in use: the disk a prune
    reported freed was not given back while a server ran."""
    db, store = pruned
    ix = SegmentIndex.open(db)
    located = ix.store.segment_locations(ix.store.segment_ids())  # [id, chunk, row]
    for chunk in np.unique(located[:, 1]):
        ix.similar(int(located[located[:, 1] == chunk, 0][0]), k=3)  # maps the chunk

    def deleted_chunks_mapped():
        with open("/proc/self/maps") as maps:
            return [line for line in maps if str(db / "embeddings") in line and line.rstrip().endswith("(deleted)")]

    assert compact(store).chunks_removed == 5 and len(deleted_chunks_mapped()) == 5  # still held by the reader
    ix.similar(int(located[0, 0]), k=3)  # its next search: a new generation, the maps of deleted chunks go
    assert deleted_chunks_mapped() == []
    ix.close()
