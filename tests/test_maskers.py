"""Mask proposers: weight-free superpixels and SAM's automatic mask generator."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import usesearch
from usesearch.cli.app import app
from usesearch.masks import rle
from usesearch.masks.maskers import FelzenszwalbMasker, SamMasker
from usesearch.masks.sam import load_sam


def test_felzenszwalb_proposals_are_consistent_records(photo):
    proposals = FelzenszwalbMasker(max_masks=20)(photo)
    assert 0 < len(proposals) <= 20
    for p in proposals:
        ys, xs = np.nonzero(p.mask)
        assert p.area == p.mask.sum() > 0
        assert p.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    areas = [p.area for p in proposals]
    assert areas == sorted(areas, reverse=True)


def test_a_region_both_scales_find_is_one_proposal():
    """A region the coarser scale finds exactly as the finer did was proposed twice: the
    same segment twice in every search (19 distinct of 23 masks on this picture). A
    region that differs by a pixel stays."""
    from usesearch.masks.maskers import _same_regions
    from usesearch.masks.proposals import proposal_masks

    rgb = np.full((120, 160, 3), 200, np.uint8)
    rgb[30:90, 40:110] = (30, 60, 200)
    masks = proposal_masks(FelzenszwalbMasker()(rgb), rgb.shape[:2])
    assert len(masks) > 2 and len({np.packbits(m).tobytes() for m in masks}) == len(masks)
    fine = np.array([[0, 0, 1], [2, 2, 1]])
    coarse = np.array([[5, 5, 1], [2, 2, 2]])  # 5 is fine's 0; 2 holds fine's 2 and a pixel of its 1
    assert _same_regions(coarse, np.bincount(coarse.ravel()), fine, np.bincount(fine.ravel())) == {5}


def test_sam_masker_runs_tiny_sam_with_grid_prompts(photo):
    sam = load_sam(usesearch.get_preset("tiny").sam, "tiny")
    masker = SamMasker(sam, points_per_side=4, pred_iou_thresh=-10.0, stability_score_thresh=-10.0, box_nms_thresh=1.0)
    proposals = masker(photo)
    assert masker.params()["points_per_side"] == 4
    assert len(proposals) >= 4, len(proposals)  # (random weights: gates and NMS open, the 16 prompts' masks stay)
    for p in proposals:
        assert p.mask.shape == photo.shape[:2] and p.predicted_iou is not None


def test_cli_embed_ranks_segments_for_each_text(tmp_path, photo):
    from PIL import Image

    image = tmp_path / "astronaut.png"
    Image.fromarray(photo).save(image)
    result = CliRunner().invoke(
        app, ["embed", str(image), "a face", "a flag", "-k", "2", "--preset", "tiny"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "a face" in result.output and "a flag" in result.output and "use-tiny-" in result.output
    as_json = CliRunner().invoke(
        app, ["embed", str(image), "a face", "a flag", "-k", "2", "--preset", "tiny", "--json"]
    )
    rows = json.loads(as_json.stdout)
    assert [(r["text"], r["rank"]) for r in rows] == [("a face", 1), ("a face", 2), ("a flag", 1), ("a flag", 2)]
    assert rows[0]["score"] >= rows[1]["score"] and rows[0]["model"].startswith("use-tiny-")
    for row in rows:  # each mask as COCO RLE, its area and box the table's
        mask = rle.decode(row["mask"])
        assert (
            mask.shape == photo.shape[:2] and mask.sum() == row["area"] and list(rle.bbox(row["mask"])) == row["bbox"]
        )


def test_sam2_masker_produces_masks_through_index(tmp_path):
    """--masker sam2: SAM 2.1's generator (the seeded 256-px Hiera-T for the tiny
    preset), with the same mask-quality options as --masker sam."""
    pytest.importorskip("sam2", reason="the sam2 extra is not installed: pip install -e '.[sam2]'")
    from typer.testing import CliRunner

    from tests.helpers import write_photos
    from usesearch.cli.app import app
    from usesearch.indexer import SegmentIndex

    photos = write_photos(tmp_path / "photos", ("coffee", "chelsea"))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "index",
            str(photos),
            "--db",
            str(tmp_path / "db"),
            "--preset",
            "tiny",
            "--masker",
            "sam2",
            "--points-per-side",
            "4",
            "--pred-iou-thresh",
            "-10",
            "--stability-score-thresh",
            "-10",
            "--box-nms-thresh",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    ix = SegmentIndex.open(tmp_path / "db")
    assert ix.info.masker == "sam2" and ix.info.masker_params == {
        "model": "tiny",
        "points_per_side": 4,
        "pred_iou_thresh": -10.0,
        "stability_score_thresh": -10.0,
        "box_nms_thresh": 1.0,
    }
    rows = ix.store.rows(ix.store.segment_ids())
    assert len(rows) >= 4 and ix.stats()["images_done"] == 2
    from usesearch.masks import rle

    for row in rows.values():  # each stored box and area is its mask's
        mask = {"size": list(row.image_hw), "counts": row.rle_counts}
        assert rle.area(mask) == row.area and tuple(rle.bbox(mask)) == row.bbox
    ix.close()
    wrong = runner.invoke(
        app,
        [
            "index",
            str(photos),
            "--db",
            str(tmp_path / "db2"),
            "--preset",
            "tiny",
            "--masker",
            "sam2",
            "--encoder-batch",
            "2",
        ],
    )
    assert wrong.exit_code == 2 and "--encoder-batch" in wrong.output and "Traceback" not in wrong.output


def test_sam2_real_models_say_where_their_weights_go():
    pytest.importorskip("sam2", reason="the sam2 extra is not installed")
    from usesearch.errors import UsesearchError
    from usesearch.masks.sam2_models import load_sam2

    with pytest.raises(UsesearchError, match=r"models pull sam2:hiera_l.*sam2\.1_hiera_large\.pt"):
        load_sam2("hiera_l")


def test_the_sam2_masker_builds_without_torch_s_jit_warning():
    """sam2's predictor scripts its transforms with torch.jit, which torch now warns of
    on every run: not the user's concern, so not on their screen."""
    import warnings

    pytest.importorskip("sam2", reason="the sam2 extra is not installed: pip install -e '.[sam2]'")
    from usesearch.masks.registry import build_masker

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_masker("sam2", usesearch.get_preset("tiny"))
    assert not [w for w in caught if "torch.jit.script" in str(w.message)]


def test_a_batch_size_is_no_part_of_an_index_identity_and_a_mask_setting_is(tmp_path):
    """``--points-per-batch`` changes no mask (how the work is batched): a re-run with
    another is no other masker, nor is an index that recorded it before it left the
    identity; ``--points-per-side`` is refused."""
    from sqlalchemy import update

    from tests.helpers import write_photos
    from usesearch.errors import IndexMismatchError
    from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
    from usesearch.indexer.records import IndexInfo

    photos = write_photos(tmp_path / "photos", ("coffee",))
    db = tmp_path / "db"

    def run(**settings):
        low = {"pred_iou_thresh": -10.0, "stability_score_thresh": -10.0, **settings}
        return index_paths([photos], db, IndexOptions(preset="tiny", masker="sam", masker_options=low))

    assert run(points_per_side=4, points_per_batch=8).done == 1
    params = SegmentIndex.open(db).info.masker_params
    assert "points_per_batch" not in params and params["points_per_side"] == 4
    assert run(points_per_side=4, points_per_batch=16).skipped == 1
    ix = SegmentIndex.open(db)  # as an older usesearch recorded it
    with ix.store.sessions.begin() as s:
        s.execute(update(IndexInfo).values(masker_params={**params, "points_per_batch": 8}))
    ix.close()
    assert run(points_per_side=4, points_per_batch=32).skipped == 1
    with pytest.raises(IndexMismatchError, match="points_per_side"):
        run(points_per_side=8)


def test_a_large_photos_felzenszwalb_masks_go_out_as_rles_one_at_a_time_and_equal_the_dense_ones(
    photo, monkeypatch, tmp_path
):
    """64 dense masks of a 49 MP scan took 3.1 GB (5.2 GB at the run's peak): past
    ``DENSE_MASK_PIXELS`` the masker makes each mask's RLE in turn. Same proposals, and
    an index of them equals one of the dense masks, vector for vector."""
    from PIL import Image

    from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
    from usesearch.masks import maskers

    dense = FelzenszwalbMasker()(photo)
    monkeypatch.setattr(maskers, "DENSE_MASK_PIXELS", 0)
    encoded = FelzenszwalbMasker()(photo)
    assert all(p._mask is None for p in encoded) and len(dense) > 5
    assert [(p.rle, p.bbox, p.area) for p in encoded] == [(p.rle, p.bbox, p.area) for p in dense]
    (tmp_path / "p").mkdir()
    Image.fromarray(photo).save(tmp_path / "p" / "a.png")
    options = IndexOptions(preset="tiny", masker="felzenszwalb")
    index_paths([tmp_path / "p"], tmp_path / "rle", options)
    monkeypatch.undo()
    index_paths([tmp_path / "p"], tmp_path / "dense", options)
    vectors = [
        np.concatenate([v for _, v in SegmentIndex.open(tmp_path / db).store.embeddings()]) for db in ("rle", "dense")
    ]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=2e-3)


def test_sam2_with_crops_finding_nothing_gives_no_masks_and_no_ten_line_warning(caplog):
    """--masker sam2 --crop-n-layers 1 failed every photo whose crops held no mask, in
    sam2's words ("IndexError: index 2 is out of bounds"); --min-mask-region-area warned
    in ten lines a prompt batch where sam2's CUDA extension is not built."""
    import warnings

    pytest.importorskip("sam2", reason="the sam2 extra is not installed: pip install -e '.[sam2]'")
    from usesearch.masks import sam2_models
    from usesearch.masks.registry import build_masker

    masker = build_masker(
        "sam2",
        usesearch.get_preset("tiny"),
        points_per_side=2,
        crop_n_layers=1,
        pred_iou_thresh=1.0,  # nothing kept in any crop
        min_mask_region_area=50,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert masker(np.zeros((48, 64, 3), np.uint8), "a.png") == []
    assert not [w for w in caught if "post-processing" in str(w.message)]
    said = [r.getMessage() for r in caplog.records if r.name == sam2_models.__name__]
    assert said == [  # on the CPU, with or without the extension
        "sam2's low-res hole filling needs its CUDA extension on a GPU: skipped here (small regions still removed)"
    ]
