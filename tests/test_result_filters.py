"""Results users can act on: --min-score cuts hits off by score, --distinct keeps one
hit per region (a part inside a better whole, or a whole around a better part, goes),
checked against hand-built hits whose scores and masks are known."""

import numpy as np
import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from usesearch.indexer import SearchFilters, SegmentIndex, reindex
from usesearch.indexer.folder import db_url_for
from usesearch.indexer.records import ImageRecord, IndexInfo, SegmentRecord
from usesearch.indexer.store import Store
from usesearch.masks import rle

H = W = 40


def box(y0, y1, x0, x1) -> str:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return rle.encode(mask)["counts"]


# (image, mask, score against the query e0)
SEGMENTS = [
    (1, box(0, 20, 0, 20), 0.90),  # 1: a whole
    (1, box(0, 10, 0, 10), 0.85),  # 2: its part
    (2, box(5, 30, 5, 30), 0.80),  # 3: another photo's region
    (1, box(25, 40, 25, 40), 0.70),  # 4: elsewhere in photo 1
    (2, box(0, 40, 0, 40), 0.60),  # 5: photo 2 whole, around segment 3
    (2, box(32, 40, 0, 8), 0.30),  # 6
]


@pytest.fixture()
def hand_built(tmp_path, tiny_use):
    db = tmp_path / "db"
    db.mkdir()
    store = Store(db_url_for(db, None))
    store.set_info(
        IndexInfo(
            preset="tiny",
            embedder="use",
            fingerprint=tiny_use.fingerprint,
            head=None,
            dim=8,
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
                    "id": i,
                    "path": f"/p/{i}.png",
                    "fs_path": f"/p/{i}.png".encode(),
                    "sha256": f"{i:064x}",
                    "width": W,
                    "height": H,
                    "status": "done",
                }
                for i in (1, 2)
            ],
        )
    vectors = np.zeros((len(SEGMENTS), 8), np.float32)
    for i, (_, _, score) in enumerate(SEGMENTS):
        vectors[i, 0], vectors[i, 1 + i % 7] = score, np.sqrt(1 - score**2)  # cosine with e0 is the score
    chunks, rows = store.files().append(vectors)
    with store.sessions.begin() as s:
        s.execute(
            insert(SegmentRecord),
            [
                {
                    "id": i + 1,
                    "image_id": image,
                    "x": 0,
                    "y": 0,
                    "w": 1,
                    "h": 1,
                    "area": int(rle.area({"size": [H, W], "counts": m})),
                    "rle_counts": m,
                    "vec_chunk": int(c),
                    "vec_row": int(r),
                }
                for i, ((image, m, _), c, r) in enumerate(zip(SEGMENTS, chunks, rows))
            ],
        )
    store.close()
    reindex(db)
    ix = SegmentIndex.open(db)
    yield ix
    ix.close()


E0 = np.eye(8, dtype=np.float32)[0]


def ids(hits):
    return [h.segment_id for h in hits]


def test_min_score_keeps_only_hits_at_or_above_it(hand_built):
    assert ids(hand_built.search_vector(E0, 10, SearchFilters(min_score=0.75))) == [1, 2, 3]
    assert ids(hand_built.search_vector(E0, 2, SearchFilters(min_score=0.75))) == [1, 2]
    assert ids(hand_built.search_vector(E0, 10, SearchFilters(min_score=0.70))) == [1, 2, 3, 4]  # at the cut-off: kept
    assert hand_built.search_vector(E0, 10, SearchFilters(min_score=0.95)) == []
    assert ids(hand_built.search_vector(E0, 10, SearchFilters(min_score=0.65, path="/p/2.png"))) == [3]


def test_distinct_drops_parts_of_better_hits_and_wholes_around_them(hand_built):
    distinct = SearchFilters(distinct=True)
    assert ids(hand_built.search_vector(E0, 4, distinct)) == [1, 3, 4, 6]  # 2 lies in 1; 5 contains 3
    assert ids(hand_built.search_vector(E0, 2, distinct)) == [1, 3]
    assert ids(hand_built.search_vector(E0, 10, SearchFilters(distinct=True, min_score=0.75))) == [1, 3]
    assert ids(hand_built.search_vector(E0, 10)) == [1, 2, 3, 4, 5, 6]  # without it, all of them
    overlap = rle.overlap_of_smaller(
        [{"size": [H, W], "counts": SEGMENTS[1][1]}], [{"size": [H, W], "counts": SEGMENTS[0][1]}]
    )
    assert overlap.shape == (1, 1) and overlap[0, 0] == pytest.approx(1.0)


def test_cli_and_web_take_min_score_and_distinct(hand_built):
    from usesearch.cli.app import app

    result = CliRunner().invoke(
        app, ["similar", "2", "--db", str(hand_built.db_dir), "--distinct", "--min-score", "0.5", "--json"]
    )
    assert result.exit_code == 0, result.output
    import json

    hits = json.loads(result.stdout)
    assert hits and all(h["score"] >= 0.5 for h in hits)
    images = {}
    for h in hits:  # no two hits of one photo where one mostly holds the other
        for other in images.get(h["image_id"], []):
            assert rle.overlap_of_smaller([h["mask"]], [other])[0, 0] < 0.8
        images.setdefault(h["image_id"], []).append(h["mask"])
    from fastapi.testclient import TestClient

    from usesearch.indexer.web import create_app

    client = TestClient(create_app(hand_built))
    response = client.get("/api/segments/2/similar", params={"k": 10, "distinct": "true", "min_score": 0.5})
    assert response.status_code == 200, response.text
    assert [h["segment_id"] for h in response.json()["hits"]] == ids(
        hand_built.similar(2, 10, SearchFilters(distinct=True, min_score=0.5))
    )
    assert client.get("/api/segments/2/similar", params={"min_score": 3}).status_code == 422


def test_a_min_score_that_cuts_every_hit_says_the_best_score(hand_built):
    """An empty table said nothing of how far off --min-score was."""
    from usesearch.cli.app import app

    best = hand_built.similar(2, 1)[0].score
    result = CliRunner().invoke(app, ["similar", "2", "--db", str(hand_built.db_dir), "--min-score", "0.999"])
    assert result.exit_code == 0, result.output
    assert f"no hit scores at least --min-score 0.999 (the best found without it scores {best:.3f})" in result.stderr, (
        result.output
    )
    kept = CliRunner().invoke(app, ["similar", "2", "--db", str(hand_built.db_dir), "--min-score", "-1"])
    assert kept.exit_code == 0 and "no hit scores" not in kept.stderr


def test_a_tables_title_names_distinct_and_per_image():
    """The title said the filters (`--min-score`, `--path`, ...) but not `--distinct` or
    `--per-image`, which shape the hits as much."""
    from types import SimpleNamespace

    from usesearch.cli.search_output import top_of
    from usesearch.indexer import SearchFilters

    index = SimpleNamespace(index=SimpleNamespace(ntotal=462))
    assert top_of(5, index, SearchFilters()) == "top 5 of 462 segments"
    assert (
        top_of(5, index, SearchFilters(distinct=True, per_image=True))
        == "top 5 of 462 segments (--per-image, --distinct)"
    )
    assert (
        top_of(3, index, SearchFilters(distinct=True, min_score=0.5))
        == "top 3 of the segments where --min-score 0.5 (462 segments in the index, --distinct)"
    )
