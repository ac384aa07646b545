"""Archive scale on one machine: the index type follows the collection's size, a
compressed index re-scores its candidates exactly, training uses a bounded sample
(FAISS's GPU path: ``test_faiss_gpu.py``)."""

import faiss
import numpy as np
import pytest
from sqlalchemy import insert

import usesearch.indexer.index_choice as index_choice
from usesearch.indexer import SegmentIndex, index_kinds, reindex
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
    assert reindex(tmp_path / "db").vectors == len(data)  # automatic: past the threshold, so compressed
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
    from usesearch.indexer import index_kinds, vectors

    vectors._train_if_needed(index_kinds.new_index(64, "IVF64,Flat"), store)
    assert read == [3000]


def exact_filtered(data, q, keep: np.ndarray, k: int) -> list[int]:
    """Brute force: ids (1-based) of the top k among ``keep`` (a boolean per row)."""
    scores = np.where(keep, data @ q, -np.inf)
    order = np.lexsort((np.arange(len(data)), -scores))
    return [int(i) + 1 for i in order[:k] if keep[i]]


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
    from usesearch.indexer.row_scores import top_rows

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


PQ_KINDS = (faiss.IndexPQ, faiss.IndexIVFPQ)


def _polysemous(index):
    """Whether each PQ inside the index would be trained polysemously."""
    return [part.do_polysemous_training for part in index_kinds._parts(index) if isinstance(part, PQ_KINDS)]


@pytest.mark.parametrize(
    "factory, without",
    [
        ("IVF16,PQ8", "IVF16,PQ8np"),
        ("PQ8", "PQ8np"),
        ("OPQ8,IVF16,PQ8", "OPQ8,IVF16,PQ8np"),
        ("PQ8,Refine(Flat)", "PQ8np,Refine(Flat)"),  # (a Refine over an IVF takes no ids: refused)
    ],
)
def test_pq_codebooks_are_trained_without_polysemous_reordering(factory, without):
    """FAISS's factory turns polysemous training on for 8-bit PQ (the GPU path's
    IVF-PQ): 92% of its training time, for Hamming filtering no search here uses. The
    index is what FAISS's own "np" spelling of it makes."""
    assert any(_polysemous(faiss.index_factory(32, factory)))  # FAISS's default, which new_index turns off
    assert _polysemous(index_kinds.new_index(32, factory)) == _polysemous(faiss.index_factory(32, without)) == [False]


CODEBOOKS = "training PQ codebooks of 256 centroids on 600 vectors (FAISS asks for 9984)"


@pytest.mark.parametrize(
    "factory, line",  # (a plain PQ, an OPQ: 800 lines)
    [
        ("IVF4,PQ4", CODEBOOKS),  # (not "256 clusters", read as its 4 lists)
        ("PQ4", CODEBOOKS),
        ("OPQ4,IVF4,PQ4", CODEBOOKS),
        ("IVF32,Flat", "training 32 IVF lists on 600 vectors (FAISS asks for 1248)"),
    ],
)
def test_training_on_few_points_is_one_line_not_faiss_warning_per_k_means(tmp_path, capfd, caplog, factory, line):
    """FAISS printed "WARNING clustering N points to K centroids" from C++ for the
    coarse quantizer and every PQ sub-quantizer: eight lines or more per rebuild."""
    synthetic_index(tmp_path / "db", n=600, dim=16, images=20)
    with caplog.at_level("WARNING"):
        reindex(tmp_path / "db", factory)
    assert "WARNING clustering" not in capfd.readouterr().err
    said = [r.getMessage() for r in caplog.records if "training" in r.getMessage()]
    assert len(said) == 1 and line in said[0], said
    assert SegmentIndex.open(tmp_path / "db").index.ntotal == 600


def test_a_plain_pq_on_fewer_vectors_than_its_codebooks_is_refused_in_one_line(tmp_path):
    """`reindex --factory PQ8` on 128 vectors gave FAISS's C++ error (`Error in void
    faiss::Clustering::train_encoded(...) at Clustering.cpp:66`), where an IVF-PQ is
    refused in words before any training."""
    synthetic_index(tmp_path / "db", n=128, dim=16, images=8)
    with pytest.raises(ValueError, match="this index type trains 256 clusters, on at least as many vectors") as caught:
        reindex(tmp_path / "db", "PQ4")
    assert "Clustering.cpp" not in str(caught.value)
    assert SegmentIndex.open(tmp_path / "db").index.ntotal == 128  # the index as it was


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
