"""Archive scale on one machine: the index type follows the collection's size, a
compressed index re-scores its candidates exactly, training uses a bounded sample
(FAISS's GPU path: ``test_faiss_gpu.py``)."""

import numpy as np
import pytest
from sqlalchemy import insert

import usesearch.indexer.index_choice as index_choice
from tests.helpers import OPTS, write_photos
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths, reindex
from usesearch.indexer.folder import db_url_for
from usesearch.indexer.records import ImageRecord, IndexInfo, SegmentRecord
from usesearch.indexer.store import Store


def synthetic_index(db, n=20_000, dim=64, images=200, seed=0, noise=0.35, image_of=None):
    """An index of n clustered unit vectors (near-duplicates inside clusters, as CLIP
    scores are), without models: the store, the embedding files and metadata. Image
    ``i`` lies in folder ``/a/{i % 10}/``; segment ``j`` in image ``j % images`` or, with
    ``image_of`` (cluster numbers -> image numbers), where its cluster puts it."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim)).astype(np.float32)
    clusters = rng.integers(0, 300, n)
    data = centres[clusters] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    image = np.arange(n) % images if image_of is None else image_of(clusters)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    db.mkdir(parents=True)
    store = Store(db_url_for(db, None))
    store.set_info(
        IndexInfo(
            preset="tiny",
            embedder="use",
            fingerprint="synthetic",
            head=None,
            dim=dim,
            masker="none",
            masker_params={},
            factory="IDMap2,Flat",
        )
    )
    with store.sessions.begin() as s:
        s.execute(
            insert(ImageRecord),
            [
                {
                    "id": i + 1,
                    "path": f"/a/{i % 10}/{i}.jpg",
                    "fs_path": f"/a/{i % 10}/{i}.jpg".encode(),
                    "sha256": f"{i:064x}",
                    "width": 8,
                    "height": 8,
                    "status": "done",
                }
                for i in range(images)
            ],
        )
    chunks, rows = store.files().append(data)
    with store.sessions.begin() as s:
        s.execute(
            insert(SegmentRecord),
            [
                {
                    "id": i + 1,
                    "image_id": int(image[i]) + 1,
                    "x": 0,
                    "y": 0,
                    "w": 1,
                    "h": 1,
                    "area": int(1 + i % 97),
                    "rle_counts": "11",
                    "vec_chunk": int(c),
                    "vec_row": int(r),
                }
                for i, (c, r) in enumerate(zip(chunks, rows))
            ],
        )
    store.close()
    return data


def test_choice_by_size():
    small, large = index_choice.choose(1000, 768), index_choice.choose(10_000_000, 768)
    assert small.exact and small.factory == "IDMap2,Flat"
    # 64-byte codes either way: 4-bit fast-scan on a CPU, 8-bit PQ (what GPU IVF-PQ searches) on a GPU.
    assert not large.exact and large.factory == "IVF4096,PQ128x4fs"
    assert index_choice.choose(10_000_000, 768, gpu=True).factory == "IVF4096,PQ64"
    assert large.bytes_per_segment(768) <= 100  # the archive-scale memory target
    assert large.train_size <= index_choice.TRAIN_MAX
    assert index_choice.outgrown("IDMap2,Flat", index_choice.EXACT_UP_TO + 1, 768)
    assert not index_choice.outgrown("IDMap2,Flat", 10, 768)
    assert not index_choice.outgrown(large.factory, 11_000_000, 768)  # close enough: no rebuild per image


def test_compressed_index_rescores_candidates_and_keeps_recall(tmp_path, monkeypatch):
    monkeypatch.setattr(index_choice, "EXACT_UP_TO", 5_000)
    monkeypatch.setattr(index_choice, "nlist_for", lambda n: 64)
    monkeypatch.setattr(index_choice, "pq_m", lambda dim, bits=8: 8)  # quick to train; the re-scoring is what is tested
    data = synthetic_index(tmp_path / "db", n=10_000)
    assert reindex(tmp_path / "db") == len(data)  # automatic: past the threshold, so compressed
    ix = SegmentIndex.open(tmp_path / "db")
    assert "IVF64,PQ" in ix.info.factory and ix.info.index_mode == "auto" and not ix.index.exact
    rng = np.random.default_rng(1)
    recalls = []
    for q in data[rng.integers(0, len(data), 30)] + 0.1 * rng.standard_normal((30, data.shape[1])).astype(np.float32):
        q /= np.linalg.norm(q)
        exact = np.argsort(-(data.astype(np.float16).astype(np.float32) @ q))[:10] + 1
        hits = ix.search_vector(q, 10)
        recalls.append(len(set(exact) & {h.segment_id for h in hits}) / 10)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert np.mean(recalls) >= 0.95
    stats = ix.stats()
    assert "re-scored" in stats["index_choice"] and stats["faiss_device"] in ("cpu", "cuda")


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
    assert any("outgrew" in r.getMessage() for r in caplog.records)
    fixed = tmp_path / "fixed"
    index_paths([photos], fixed, IndexOptions(**{**OPTS, "factory": "IDMap2,Flat"}))
    # A type to train cannot start a new index (it would train on the first photo, or fail
    # on it and leave a folder no run opens); another type than an index has is refused too.
    from usesearch.errors import UsesearchError

    with pytest.raises(UsesearchError, match="IVF16,Flat must be trained .* reindex --db"):
        index_paths([photos], tmp_path / "ivf", IndexOptions(**{**OPTS, "factory": "IVF16,Flat"}))
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
    # A type chosen by hand, undone: `reindex --factory auto` (it was an invalid factory,
    # and no flag gave the automatic choice back); a type too big to train, refused in our words.
    with pytest.raises(ValueError, match="trains 4096 clusters, on at least as many vectors.*--factory auto"):
        reindex(fixed, "IVF4096,PQ8")
    reindex(fixed, "auto")
    again = SegmentIndex.open(fixed)
    chosen = index_choice.choose(again.index.ntotal, again.info.dim).factory
    assert (again.info.index_mode, again.info.factory) == ("auto", chosen) and again.index.ntotal > 0


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


def test_training_reads_a_bounded_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(index_choice, "TRAIN_MAX", 3000)
    synthetic_index(tmp_path / "db", n=12_000)
    store = Store(db_url_for(tmp_path / "db", None))
    read = []
    real = store.embeddings
    monkeypatch.setattr(
        store,
        "embeddings",
        lambda ids=None, **kw: (read.append(len(ids) if ids is not None else -1), real(ids, **kw))[1],
    )
    from usesearch.indexer import vectors

    vectors._train_if_needed(vectors.new_index(64, "IVF64,Flat"), store)
    assert read == [3000]


@pytest.fixture()
def compressed(tmp_path, monkeypatch):
    """A small compressed index (IVF64,PQ8 with re-scoring) over synthetic vectors."""
    monkeypatch.setattr(index_choice, "EXACT_UP_TO", 5_000)
    monkeypatch.setattr(index_choice, "nlist_for", lambda n: 64)
    monkeypatch.setattr(index_choice, "pq_m", lambda dim, bits=8: 8)
    data = synthetic_index(tmp_path / "db", n=10_000)
    reindex(tmp_path / "db")
    ix = SegmentIndex.open(tmp_path / "db")
    yield ix, data.astype(np.float16).astype(np.float32)
    ix.close()


def exact_filtered(data, q, keep: np.ndarray, k: int) -> list[int]:
    """Brute force: ids (1-based) of the top k among ``keep`` (a boolean per row)."""
    scores = np.where(keep, data @ q, -np.inf)
    order = np.lexsort((np.arange(len(data)), -scores))
    return [int(i) + 1 for i in order[:k] if keep[i]]


def test_narrow_min_area_is_an_id_selection_scored_exactly(compressed, monkeypatch):
    """--min-area keeping few segments is resolved through the area index and scored
    exactly, without FAISS; results equal the brute-force filtered search."""
    import usesearch.indexer.selection

    monkeypatch.setattr(
        usesearch.indexer.selection, "SELECTION_MAX", 1000
    )  # of 10,000 here; 200,000 of millions in use
    ix, data = compressed
    areas = np.array([1 + i % 97 for i in range(len(data))])
    searched = []
    real = ix.index.search
    monkeypatch.setattr(ix.index, "search", lambda *a, **kw: searched.append(1) or real(*a, **kw))
    rng = np.random.default_rng(3)
    for q in data[rng.integers(0, len(data), 5)]:
        hits = ix.search_vector(q, 10, SearchFilters(min_area=95))  # 3 in 97 segments: about 300
        assert [h.segment_id for h in hits] == exact_filtered(data, q, areas >= 95, 10)
        assert all(h.area >= 95 for h in hits)
    assert not searched
    broad = ix.search_vector(data[0], 10, SearchFilters(min_area=2))  # keeps nearly all: checked on FAISS's candidates
    assert searched and len(broad) == 10 and all(h.area >= 2 for h in broad)


def test_narrow_path_glob_reads_only_its_folder_and_scores_exactly(compressed, monkeypatch):
    ix, data = compressed
    images = np.arange(len(data)) % 200  # image i + 1 holds segments i, i + 200, ...; its path is /a/{i % 10}/{i}.jpg
    under_3 = (images % 10 == 3) & (images < 100)  # /a/3/?.jpg and /a/3/??.jpg: images 3, 13, ..., 93
    q = data[17]
    hits = ix.search_vector(q, 10, SearchFilters(path="/a/3/??.jpg"))
    assert [h.segment_id for h in hits] == exact_filtered(data, q, under_3 & (images >= 10), 10)
    assert [h.segment_id for h in ix.search_vector(q, 10, SearchFilters(path="/a/3/?.jpg"))] == exact_filtered(
        data, q, images == 3, 10
    )
    no_prefix, unclosed = SearchFilters(path="*/3/1?.jpg"), SearchFilters(path="/a/3[")
    assert {h.image for h in ix.search_vector(q, 5, no_prefix)} == {"/a/3/13.jpg"}  # no literal prefix
    assert ix.search_vector(q, 5, unclosed) == []  # an unclosed class is literal, and matches nothing
    from sqlalchemy import event

    statements = []
    event.listen(
        ix.store.engine, "before_cursor_execute", lambda conn, cursor, sql, params, *a: statements.append(params)
    )
    assert ix.store.image_ids_matching("/a/1/1*") == {
        i + 1 for i in range(200) if i % 10 == 1 and str(i).startswith("1")
    }
    assert any("/a/1/1" in map(str, params) for params in statements)  # the literal prefix went to the path index


def test_nprobe_and_rerank_trade_speed_for_recall(compressed):
    """Every cluster visited and every vector re-scored: the compressed index answers
    exactly; the CLI takes both settings."""
    ix, data = compressed
    rng = np.random.default_rng(4)
    for q in data[rng.integers(0, len(data), 5)] + 0.3 * rng.standard_normal((5, data.shape[1])).astype(np.float32):
        q /= np.linalg.norm(q)
        hits = ix.search_vector(q, 10, SearchFilters(nprobe=64, rerank=len(data)))
        assert [h.segment_id for h in hits] == exact_filtered(data, q, np.ones(len(data), bool), 10)
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    result = CliRunner().invoke(
        app, ["similar", "5", "--db", str(ix.db_dir), "--nprobe", "64", "--rerank", "10000", "--json"]
    )
    assert result.exit_code == 0, result.output
    import json

    found = [h["segment_id"] for h in json.loads(result.output)]
    keep = np.ones(len(data), bool)
    keep[4] = False
    assert found == exact_filtered(data, data[4], keep, 10)


def test_embedding_files_read_runs_and_scattered_rows_alike(tmp_path):
    """Rows read as slices (an image's consecutive segments) or one by one give the
    same vectors, in the order asked for."""
    from usesearch.indexer.embeddings import EmbeddingFiles

    files = EmbeddingFiles(tmp_path / "emb", 8)
    data = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float16)
    chunks, rows = files.append(data)
    for pick in (np.arange(100, 400), np.r_[np.arange(10, 60), np.arange(300, 320)], np.array([7, 3, 400, 401, 5])):
        np.testing.assert_array_equal(files.read(chunks[pick], rows[pick]), data[pick].astype(np.float32))
    np.testing.assert_array_equal(files.read(chunks[pick], rows[pick], np.float16), data[pick])


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_float16_prefilter_keeps_every_exact_top_row(scale):
    """top_rows scores a float16 product first and re-scores only the rows near the
    fetch-th best: the result equals the exact float32 top, near-ties included (rows
    1e-4 apart, far below float16's rounding of the product), with and without an
    exclusion mask, for unit rows and longer ones."""
    from usesearch.indexer.embeddings import top_rows

    rng = np.random.default_rng(7)
    base = rng.standard_normal((40, 64)).astype(np.float32)
    rows = base[rng.integers(0, 40, 30_000)] + 1e-4 * rng.standard_normal((30_000, 64)).astype(np.float32)
    rows = (scale * rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)
    exact_rows = rows.astype(np.float32)
    max_norm = float(np.linalg.norm(exact_rows, axis=1).max())
    keep = rng.random(len(rows)) < 0.7
    for q in rng.standard_normal((6, 64)).astype(np.float32):
        q /= np.linalg.norm(q)
        for mask in (None, keep):
            exact = np.where(mask if mask is not None else True, exact_rows @ q, -np.inf)
            want = np.lexsort((np.arange(len(rows)), -exact))[:25]
            positions, scores = top_rows(rows, q, 25, max_norm, mask)
            got = positions[np.lexsort((positions, -scores))[:25]]
            np.testing.assert_array_equal(got, want)
            assert len(positions) < len(rows) // 4  # a prefilter: most rows never scored exactly


def test_candidate_locations_in_one_json_parameter_equal_the_in_lists(tmp_path):
    from sqlalchemy import select

    from usesearch.indexer.folder import open_store
    from usesearch.indexer.records import SegmentRecord

    synthetic_index(tmp_path / "db", n=3_000, dim=8, images=30)
    store = open_store(tmp_path / "db", read_only=True)
    wanted = np.random.default_rng(1).choice(np.arange(1, 3_001), 2_000, replace=False).tolist() + [5_000, 10**12]
    fast = store.segment_locations(wanted)
    seg = SegmentRecord
    plain = store._locations(
        [
            select(seg.id, seg.vec_chunk, seg.vec_row).where(seg.id.in_(wanted[i : i + 900]))
            for i in range(0, len(wanted), 900)
        ]
    )
    assert len(fast) == 2_000 and sorted(map(tuple, fast.tolist())) == sorted(map(tuple, plain.tolist()))


def test_candidate_facts_read_light_are_the_rows_own(tmp_path, monkeypatch):
    """``segment_facts`` (what filters check on a widened search's many candidates) says
    what ``rows`` says of each segment, through SQLite's JSON parameter and the IN lists alike."""
    from usesearch.indexer.folder import open_store

    synthetic_index(tmp_path / "db", n=3_000, dim=8, images=30)
    store = open_store(tmp_path / "db", read_only=True)
    wanted = np.random.default_rng(1).choice(np.arange(1, 3_001), 2_000, replace=False).tolist() + [5_000]
    rows = store.rows(wanted)
    expected = {i: (r.image_id, r.area, r.source, r.category, r.split) for i, r in rows.items()}
    assert len(expected) == 2_000 and {i: tuple(f) for i, f in store.segment_facts(wanted).items()} == expected
    monkeypatch.setattr(store, "_sqlite_rows", lambda columns, ids: None)  # as on PostgreSQL
    assert {i: tuple(f) for i, f in store.segment_facts(wanted).items()} == expected


def test_training_on_few_points_is_one_line_not_faiss_warning_per_k_means(tmp_path, capfd, caplog):
    """FAISS printed "WARNING clustering N points to K centroids" from C++ for the
    coarse quantizer and every PQ sub-quantizer: eight lines or more per rebuild."""
    synthetic_index(tmp_path / "db", n=600, dim=16, images=20)
    with caplog.at_level("WARNING"):
        reindex(tmp_path / "db", "IVF4,PQ4")
    assert "WARNING clustering" not in capfd.readouterr().err
    said = [r.getMessage() for r in caplog.records if "training" in r.getMessage()]
    assert len(said) == 1 and "training 256 clusters on 600 vectors (FAISS asks for 9984)" in said[0], said
    assert SegmentIndex.open(tmp_path / "db").index.ntotal == 600


def test_a_selection_searched_within_as_a_bitmap_holds_what_a_hash_set_holds():
    """``id_selector``: a bitmap where the ids are dense (FAISS's hash set took 17 ms to
    build for 160,000 ids, a filtered search's whole FAISS time; the bitmap 0.5 ms),
    the hash set where they are few. The same members, the same results."""
    import faiss

    from usesearch.indexer.vectors import id_selector

    rng = np.random.default_rng(0)
    ids = np.arange(1, 5001) * 3  # ids up to 15,000
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(rng.standard_normal((len(ids), 8)).astype(np.float32), ids)
    q = rng.standard_normal((1, 8)).astype(np.float32)
    for chosen, dense in ((rng.choice(ids, 2000, replace=False), True), (rng.choice(ids, 20, replace=False), False)):
        selector, bits = id_selector(chosen)
        assert (bits is not None) == dense
        assert [i for i in range(16_000) if selector.is_member(i)] == sorted(chosen.tolist())
        found = index.search(q, 50, params=faiss.SearchParameters(sel=selector))[1]
        reference = index.search(q, 50, params=faiss.SearchParameters(sel=faiss.IDSelectorBatch(chosen)))[1]
        assert np.array_equal(found, reference) and set(found[0][found[0] >= 0]) <= set(chosen.tolist())


def test_an_hnsw_index_returns_every_hit_asked_for(tmp_path):
    """FAISS's HNSW explores efSearch (16) nodes, and for many results asked fell short
    of them without a word: 77 hits of 100 asked on a 256-segment index."""
    data = synthetic_index(tmp_path / "db", n=2000, dim=16, images=20)
    reindex(tmp_path / "db", "HNSW32", text_queries=False)
    ix = SegmentIndex.open(tmp_path / "db")
    assert [len(ix.search_vector(data[0], k)) for k in (10, 500, 1000)] == [10, 500, 1000]
    hits = ix.search_vector(data[0], 10)
    assert [h.segment_id for h in hits] == exact_filtered(
        data.astype(np.float16).astype(np.float32), data[0], np.ones(len(data), bool), 10
    )
    ix.close()


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


@pytest.mark.parametrize("per_image", [False, True])
def test_candidates_read_light_first_give_the_hits_whole_rows_give(compressed, monkeypatch, per_image):
    """Past FULL_ROWS_UP_TO candidates of a filter checked on them, each is read light and
    only the passing ones whole, best first, as many as the hits take: the same hits."""
    import usesearch.indexer.search as search_module

    ix, data = compressed
    broad = SearchFilters(path="/a/[0-4]/*", per_image=per_image)  # half the photos: checked on the candidates
    for q in data[np.random.default_rng(6).integers(0, len(data), 4)]:
        monkeypatch.setattr(search_module, "FULL_ROWS_UP_TO", 10**9)
        whole = ix.search_vector(q, 10, broad)
        monkeypatch.setattr(search_module, "FULL_ROWS_UP_TO", 10)
        light = ix.search_vector(q, 10, broad)
        assert len(whole) == 10 and light == whole
