"""Filtered searches on a compressed index: a narrow filter is an id selection scored
exactly, and what a search reads of its candidates (light first) gives the hits
whole rows give. The index: ``test_index_scale.synthetic_index``, trained once."""

import numpy as np
import pytest

import usesearch.indexer.index_choice as index_choice
from tests.test_index_scale import exact_filtered, synthetic_index
from usesearch.indexer import SearchFilters, SegmentIndex, reindex


@pytest.fixture(scope="module")
def compressed_folder(tmp_path_factory):
    """A small compressed index (IVF64,PQ8 with re-scoring) over synthetic vectors, built
    once for the module (its training: ~4 s): its folder and vectors."""
    folder = tmp_path_factory.mktemp("compressed") / "db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_choice, "EXACT_UP_TO", 5_000)
        patch.setattr(index_choice, "nlist_for", lambda n: 64)
        patch.setattr(index_choice, "pq_m", lambda dim, bits=8: 8)
        data = synthetic_index(folder, n=10_000)
        reindex(folder)
    return folder, data.astype(np.float16).astype(np.float32)


@pytest.fixture()
def compressed(compressed_folder, tmp_path):
    """That index, a copy of the test's own: (it opened, its vectors)."""
    import shutil

    folder, data = compressed_folder
    shutil.copytree(folder, tmp_path / "db")
    ix = SegmentIndex.open(tmp_path / "db")
    yield ix, data
    ix.close()


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

    found = [h["segment_id"] for h in json.loads(result.stdout)]
    keep = np.ones(len(data), bool)
    keep[4] = False
    assert found == exact_filtered(data, data[4], keep, 10)


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


def test_a_query_whose_filters_keep_no_segment_answers_without_loading_the_text_model(compressed, monkeypatch):
    """`query "a dog" --label dgo` loaded CLIP's text tower (5 s on a CPU, a real preset's
    more) to rank nothing: the filters are resolved first."""
    ix, data = compressed

    def loads():
        raise AssertionError("the text model loaded")

    monkeypatch.setattr(ix.models, "text", loads)
    assert ix.query("a dog", 5, SearchFilters(label="dgo")) == []
    assert ix.query("a dog", 5, {"min_area": 10**9, "path": "nowhere/*"}) == []
    with pytest.raises(AssertionError, match="the text model loaded"):  # filters that keep some: it loads
        ix.query("a dog", 5, SearchFilters(min_area=2))


def test_a_query_whose_catalog_is_locked_is_said_as_busy_as_every_search(compressed, monkeypatch):
    """Its filters are resolved before the search, so the catalog's errors are read there too."""
    import sqlite3

    from usesearch.errors import CatalogBusyError

    ix, _ = compressed

    def locked():
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ix.store, "generation", locked)
    with pytest.raises(CatalogBusyError):
        ix.query("a dog", 5, SearchFilters(label="dgo"))
