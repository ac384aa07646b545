"""A photo's segments go into the catalog in one statement, and every id the store
hands back is the one whose embedding row holds that segment's vector, on SQLite and
PostgreSQL: a new photo, a changed one, its proposals replaced beside its annotations,
annotations added, and a photo whose rows cross into a new embedding chunk."""

import numpy as np
import pytest
from sqlalchemy import event

import usesearch.indexer.embeddings as embeddings
from usesearch.indexer.folder import db_url_for
from usesearch.indexer.records import IndexInfo
from usesearch.indexer.store import Store

DIM = 8


def segments(n: int, **fields) -> list[dict]:
    return [
        dict(x=i, y=i, w=3, h=4, area=10 + i, rle_counts=f"r{i}", predicted_iou=0.9, stability_score=0.95, **fields)
        for i in range(n)
    ]


def stored(store: Store, ids: list[int]) -> dict[int, np.ndarray]:
    return {int(i): v for got, vs in store.embeddings(ids) for i, v in zip(got, vs)}


def assert_mapped(store: Store, ids: list[int], vectors: np.ndarray) -> None:
    """Each id's stored vector is the one given at its position."""
    by_id = stored(store, ids)
    assert len(ids) == len(vectors) and sorted(by_id) == sorted(ids)
    for i, v in zip(ids, vectors):
        np.testing.assert_array_equal(by_id[i], v.astype(np.float16).astype(np.float32))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "CHUNK_ROWS", 16)  # photos of 7 rows cross chunks
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    db = tmp_path / "db"
    db.mkdir()
    store = Store(db_url_for(db, url), folder=db)
    store.claim()
    info = dict(preset="tiny", embedder="use", fingerprint="f", head=None, dim=DIM, masker="sam", masker_params={})
    store.set_info(IndexInfo(**info, factory="IDMap2,Flat", index_mode="auto"))
    yield store
    store.close()


def test_each_id_handed_back_holds_its_own_segment_vector(store):
    rng = np.random.default_rng(0)
    vecs = lambda n: rng.standard_normal((n, DIM)).astype(np.float32)  # noqa: E731
    inserts: list[int] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO segments"):
            inserts.append(len(parameters) if executemany else 1)

    a, b = vecs(7), vecs(7)
    _, ids_a = store.save_image(b"/a.jpg", "/a.jpg", "a" * 64, (10, 10), segments(7), a)
    _, ids_b = store.save_image(b"/b.jpg", "/b.jpg", "b" * 64, (10, 10), segments(7), b)
    assert len(inserts) == 2, "one INSERT statement a photo, not one a segment"
    assert_mapped(store, ids_a, a)
    assert_mapped(store, ids_b, b)

    notes = vecs(3)  # annotations of photo a, after its proposals in the embedding files
    fields = dict(split="val", category="cat", iscrowd=False)
    annotated = [dict(s, annotation_id=100 + i) for i, s in enumerate(segments(3, **fields))]
    _, ids_notes = store.save_annotations(b"/a.jpg", "/a.jpg", "a" * 64, (10, 10), annotated, notes)
    assert_mapped(store, ids_notes, notes)

    again = vecs(7)  # a's proposals made again: its annotations stay
    removed, ids_again = store.save_image(b"/a.jpg", "/a.jpg", "a" * 64, (10, 10), segments(7), again)
    assert sorted(removed) == sorted(ids_a) and not set(ids_again) & set(ids_a)
    assert_mapped(store, ids_again, again)
    assert_mapped(store, ids_notes, notes)

    changed = vecs(5)  # b's content changed: all of it replaced
    removed, ids_changed = store.save_image(b"/b.jpg", "/b.jpg", "c" * 64, (10, 10), segments(5), changed)
    assert sorted(removed) == sorted(ids_b)
    assert_mapped(store, ids_changed, changed)
    assert sorted(int(i) for i in store.segment_ids()) == sorted(ids_again + ids_notes + ids_changed)


def test_a_write_retried_after_its_unacknowledged_commit_inserts_nothing_twice(store, monkeypatch):
    """A COMMIT the server made but whose reply was lost is tried again (``Store.retrying``
    on PostgreSQL): the retry finds the rows that commit wrote instead of inserting them a
    second time (annotations were doubled), and the ids handed back still hold their vectors."""
    real = store.retrying
    monkeypatch.setattr(store, "retrying", lambda write: (real(write), real(write))[1])
    rng = np.random.default_rng(1)
    notes, proposals = rng.standard_normal((3, DIM)).astype(np.float32), rng.standard_normal((4, DIM))
    annotated = [dict(s, annotation_id=i) for i, s in enumerate(segments(3, split="val", category="cat"))]
    _, ids_notes = store.save_annotations(b"/a.jpg", "/a.jpg", "a" * 64, (10, 10), annotated, notes)
    _, ids = store.save_image(b"/b.jpg", "/b.jpg", "b" * 64, (10, 10), segments(4), proposals.astype(np.float32))
    assert_mapped(store, ids_notes, notes)
    assert_mapped(store, ids, proposals)
    assert sorted(int(i) for i in store.segment_ids()) == sorted(ids_notes + ids)


def test_the_folder_is_synced_once_a_chunk(tmp_path, monkeypatch):
    """A chunk's name is made durable (the folder fsynced) the first time a process
    appends to it (a run killed before its fsync may have left it not durable); later
    appends need only the files' own fsync (a folder fsync a photo: 60 a second at GPU
    speed)."""
    monkeypatch.setattr(embeddings, "CHUNK_ROWS", 16)
    synced: list[int] = []
    real = embeddings._fsync_dir
    monkeypatch.setattr(embeddings, "_fsync_dir", lambda folder: synced.append(1) or real(folder))
    files = embeddings.EmbeddingFiles(tmp_path / "embeddings", DIM)
    rows = np.ones((7, DIM), np.float32)
    files.append(rows)  # chunk 0 created
    files.append(rows)  # appended
    assert len(synced) == 1
    files.append(rows)  # into chunk 1, created
    assert len(synced) == 2 and files.chunks() == [0, 1]
    again = embeddings.EmbeddingFiles(tmp_path / "embeddings", DIM)  # the next run's process
    again.append(rows[:1])
    again.append(rows[:1])
    assert len(synced) == 3
    files.sums_path(0).unlink()  # rows from before checksums: reindex and --repair write their file
    assert embeddings.EmbeddingFiles(tmp_path / "embeddings", DIM).backfill_sums() == 16 and len(synced) == 4


def test_the_files_gone_sample_runs_on_either_database(store, tmp_path):
    """``info``'s files-gone sample orders the images by a 64-bit hash of their ids: on
    PostgreSQL the constants took the 32-bit id's type and the query failed (out of range)."""
    from sqlalchemy import insert

    from usesearch.indexer.leftovers import files_gone
    from usesearch.indexer.records import DONE, ImageRecord

    rows = []
    for i in range(13):
        path = tmp_path / f"{i}.jpg"
        if i % 2:
            path.write_bytes(b"x")
        rows.append(dict(fs_path=bytes(path), path=str(path), sha256=f"{i:064x}", status=DONE))
    with store.sessions.begin() as s:
        s.execute(insert(ImageRecord), rows)
    sample = files_gone(store, most=5)
    assert sample.checked == 5 and sample.estimated and 0 < sample.number < 13
    assert files_gone(store, most=13)[:2] == (7, 13)


def test_photos_saved_together_are_one_transaction_kept_whole_or_not_at_all(store, monkeypatch):
    """``save_images``: a GPU's group of photos (a new photo, one whose proposals are
    made again beside its annotations, one failing) is one transaction, whose ids each
    hold their own vectors; a group cut short keeps none of its photos, and their rows
    are simply appended again by the retry. Retried after a commit whose reply was lost,
    it inserts nothing twice."""
    from usesearch.indexer import image_writes
    from usesearch.indexer.image_writes import PhotoWrite

    rng = np.random.default_rng(2)
    vecs = lambda n: rng.standard_normal((n, DIM)).astype(np.float32)  # noqa: E731
    notes = vecs(2)
    annotated = [dict(s, annotation_id=i) for i, s in enumerate(segments(2, split="val", category="cat"))]
    _, ids_notes = store.save_annotations(b"/a.jpg", "/a.jpg", "a" * 64, (10, 10), annotated, notes)
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda conn: commits.append(1))

    def group():
        a, b = vecs(3), vecs(6)
        return [
            PhotoWrite(b"/a.jpg", "/a.jpg", "a" * 64, (10, 10), segments(3), a),
            PhotoWrite(b"/b.jpg", "/b.jpg", "b" * 64, (10, 10), segments(6), b),
            PhotoWrite(b"/c.jpg", "/c.jpg", "c" * 64, None, error=OSError("truncated")),
        ], (a, b)

    real_write, written = image_writes.write_photo, []

    def cut_short(s, photo, *more):
        written.append(photo.path)
        if photo.path == "/c.jpg":
            raise KeyboardInterrupt
        return real_write(s, photo, *more)

    monkeypatch.setattr(image_writes, "write_photo", cut_short)
    with pytest.raises(KeyboardInterrupt):
        store.save_images(group()[0])
    assert written == ["/a.jpg", "/b.jpg", "/c.jpg"] and not commits
    assert store.image_by_path(b"/b.jpg") is None and sorted(int(i) for i in store.segment_ids()) == sorted(ids_notes)

    monkeypatch.setattr(image_writes, "write_photo", real_write)
    real_retrying = store.retrying
    monkeypatch.setattr(store, "retrying", lambda write: (real_retrying(write), real_retrying(write))[1])
    photos, (a, b) = group()
    (_, ids_a), (_, ids_b), failed = store.save_images(photos)
    assert failed == ([], []) and len(commits) == 2  # a try and its retry, a transaction each
    assert_mapped(store, ids_a, a)
    assert_mapped(store, ids_b, b)
    assert_mapped(store, ids_notes, notes)
    assert sorted(int(i) for i in store.segment_ids()) == sorted(ids_notes + ids_a + ids_b)
    assert store.image_by_path(b"/c.jpg").error_class == "OSError"
