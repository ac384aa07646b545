"""The mask generator gives segment-anything's masks: checked against the stock
``SamAutomaticMaskGenerator`` on a seeded tiny SAM, with thresholds low enough that
many masks survive, with and without crop layers and small-region clean-up."""

import os
from functools import partial

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator
from typer.testing import CliRunner

from tests.helpers import LOW, assert_consistent, mask_iou, segment_table
from usesearch.cli.app import app
from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.maskers import SamMasker
from usesearch.masks.proposals import stack_masks


@pytest.mark.parametrize(
    "settings",
    [
        dict(points_per_side=8, **LOW),
        dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.5),
        dict(points_per_side=6, crop_n_layers=1, crop_overlap_ratio=0.3, **LOW),
        dict(points_per_side=8, min_mask_region_area=40, **LOW),
        dict(points_per_side=6, crop_n_layers=1, min_mask_region_area=25, points_per_batch=7, **LOW),
    ],
    ids=["plain", "thresholds-0-nms-0.5", "crop-layers", "small-regions", "crops-small-regions-odd-batches"],
)
def test_same_masks_as_segment_anythings_generator(sam, image, settings):
    stock = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    ours = SamMaskGenerator(sam, **settings).generate(image)
    assert len(stock) > 20 and len({tuple(a["bbox"]) for a in stock}) > 10  # many distinct masks: a real comparison
    assert len(ours) == len(stock)
    unmatched = list(range(len(stock)))
    for record in ours:
        mask = mask_utils.decode({"size": record.rle["size"], "counts": record.rle["counts"].encode()}).astype(bool)
        best = max(unmatched, key=lambda j: mask_iou(mask, stock[j]["segmentation"]))
        reference = stock[best]
        unmatched.remove(best)
        assert mask_iou(mask, reference["segmentation"]) >= 0.99
        x, y, w, h = reference["bbox"]  # segment-anything's xywh: w = x1 - x0
        assert record.box_xyxy == (x, y, x + w, y + h)
        assert record.area == reference["area"]
        assert record.predicted_iou == pytest.approx(reference["predicted_iou"], abs=1e-5)
        assert record.stability_score == pytest.approx(reference["stability_score"], abs=1e-5)
    assert not unmatched


@pytest.mark.parametrize("photo", ["coffee", "astronaut"])
@pytest.mark.parametrize(
    "settings",
    [dict(points_per_side=8, **LOW), dict(points_per_side=6, crop_n_layers=1, min_mask_region_area=25, **LOW)],
    ids=["plain", "crops-small-regions"],
)
def test_bfloat16_masks_stay_within_the_documented_tolerance_of_stock(sam, photo, settings):
    """On a GPU the generator runs SAM under bfloat16 autocast; its masks are stock's
    float32 masks within ``BF16_*`` (the README's tolerance). bf16 autocast on the CPU
    stands in for the GPU's here; ``gpu_check.sh`` checks the same on a GPU."""
    from skimage import data

    from tests.helpers import BF16_COUNT, BF16_MATCHED, bf16_agreement

    image = np.ascontiguousarray(getattr(data, photo)()[::3, ::3])
    stock = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    ours = SamMaskGenerator(sam, autocast=True, **settings).generate(image)
    matched, count_gap = bf16_agreement(stock, ours)
    assert len(stock) > 100 and matched >= BF16_MATCHED and count_gap <= BF16_COUNT, (matched, count_gap)


def test_same_masks_when_the_photo_already_has_the_models_input_size(sam):
    """Then the second resize of the upscaling is skipped (it would return its input)."""
    from skimage import data

    photo = np.ascontiguousarray(
        np.asarray(__import__("PIL.Image").Image.fromarray(data.astronaut()).resize((256, 192)))
    )
    stock = SamAutomaticMaskGenerator(sam, points_per_side=6, **LOW).generate(photo)
    ours = SamMaskGenerator(sam, points_per_side=6, **LOW).generate(photo)
    assert len(ours) == len(stock) > 10
    for record, reference in zip(ours, stock):
        mask = mask_utils.decode({"size": record.rle["size"], "counts": record.rle["counts"].encode()}).astype(bool)
        assert np.array_equal(mask, reference["segmentation"])
        assert record.stability_score == pytest.approx(reference["stability_score"], abs=1e-6)


def test_stability_score_equals_segment_anythings():
    import torch
    from segment_anything.utils.amg import calculate_stability_score

    from usesearch.masks.amg_utils import stability_score

    logits = torch.randn(12, 300, 200, generator=torch.Generator().manual_seed(0)) * 3
    for view in (logits, logits[:, :250, :150]):  # contiguous, and a crop of the padded frame
        assert torch.equal(stability_score(view, 0.0, 1.0), calculate_stability_score(view, 0.0, 1.0))


def test_same_order_as_segment_anything(sam, image):
    stock = SamAutomaticMaskGenerator(sam, points_per_side=8, **LOW).generate(image)
    ours = SamMaskGenerator(sam, points_per_side=8, **LOW).generate(image)
    assert [r.predicted_iou for r in ours] == pytest.approx([a["predicted_iou"] for a in stock], abs=1e-5)


def test_masker_proposals_carry_rle_and_decode_on_use(sam, image):
    masker = SamMasker(sam, points_per_side=6, **LOW)
    proposals = masker(image)
    assert proposals and all(p._mask is None for p in proposals)  # nothing dense until asked for
    stack = stack_masks(proposals, image.shape[:2])
    assert stack.shape == (len(proposals), *image.shape[:2]) and stack.flags.c_contiguous
    for p, mask in zip(proposals, stack):
        ys, xs = np.nonzero(mask)
        assert p.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)  # COCO convention
        assert p.area == mask.sum() and np.array_equal(p.mask, mask)
    with pytest.raises(ValueError, match="no option"):
        SamMasker(sam, points_per_sid=4)


def test_a_setting_given_without_a_masker_is_checked_against_the_index_own_masker(tmp_path, image):
    """`index --pred-iou-thresh -1` on a SAM index was checked against the tiny preset's
    default masker ("apply to --masker sam only; this run uses masker felzenszwalb"): a
    run naming no masker uses the index's, and a setting it was built without is refused
    as such."""
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "coffee.png")
    args = ["index", str(tmp_path / "coffee.png"), "--db", str(tmp_path / "db")]
    made = CliRunner().invoke(app, [*args, "--preset", "tiny", "--masker", "sam", "--points-per-side", "4"])
    assert made.exit_code == 0, made.output
    refused = CliRunner().invoke(app, [*args, "--pred-iou-thresh", "-1"])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "felzenszwalb" not in said, said
    assert (
        "built with masker sam (points_per_side=4" in said
        and "asks for sam (points_per_side=4, pred_iou_thresh=-1.0)" in said
    ), said
    same = CliRunner().invoke(app, [*args, "--points-per-side", "4", "--points-per-batch", "8"])  # (not defining)
    assert same.exit_code == 0 and "1 skipped" in same.output, same.output


def test_index_cli_takes_the_mask_quality_options_and_refuses_them_for_other_maskers(tmp_path, image):
    from PIL import Image

    from usesearch.indexer import SegmentIndex

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(image).save(photos / "coffee.png")
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
            "sam",
            "--points-per-side",
            "6",
            "--points-per-batch",
            "10",
            "--pred-iou-thresh",
            "-10",
            "--stability-thresh",
            "-10",
            "--box-nms-thresh",
            "0.6",
            "--crop-layers",
            "1",
            "--min-region-area",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    info = SegmentIndex.open(tmp_path / "db").info
    assert info.masker == "sam" and info.masker_params == {
        "points_per_side": 6,  # (--points-per-batch changes no mask: no part of the identity)
        "pred_iou_thresh": -10.0,
        "stability_score_thresh": -10.0,
        "box_nms_thresh": 0.6,
        "crop_n_layers": 1,
        "min_mask_region_area": 10,
    }
    result = runner.invoke(
        app, ["index", str(photos), "--db", str(tmp_path / "db2"), "--preset", "tiny", "--points-per-side", "8"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--points-per-side" in result.output and "felzenszwalb" in result.output, result.output


@pytest.mark.parametrize(
    "settings",
    [dict(points_per_side=6, **LOW), dict(points_per_side=4, crop_n_layers=1, **LOW)],
    ids=["plain", "crop-layers"],
)
def test_photos_encoded_in_batches_give_each_photos_own_masks(sam, image, settings):
    """Several photos (of different sizes) through the image encoder at once, their crops
    split across encoder calls: each photo's masks are those it gets on its own."""
    from skimage import data

    photos = [image, np.ascontiguousarray(data.astronaut()[::4, ::3]), np.ascontiguousarray(data.rocket()[::3, ::2])]
    alone = [SamMaskGenerator(sam, **settings).generate(p) for p in photos]
    batched = SamMaskGenerator(sam, encoder_batch=2, **settings)
    together = batched.generate_batch(photos)
    assert len(together) == len(photos)
    for ours, reference, photo in zip(together, alone, photos):
        assert len(ours) == len(reference) > 5
        for a, b in zip(ours, reference):
            assert a.rle["size"] == list(photo.shape[:2])
            a_mask, b_mask = (
                mask_utils.decode({"size": r.rle["size"], "counts": r.rle["counts"].encode()}).astype(bool)
                for r in (a, b)
            )
            assert mask_iou(a_mask, b_mask) >= 0.99 and a.box_xyxy == b.box_xyxy
            assert a.predicted_iou == pytest.approx(b.predicted_iou, abs=1e-4)
    assert SamMasker(sam, points_per_side=4, encoder_batch=2).params() == {"points_per_side": 4}


def test_indexing_photos_in_encoder_batches_gives_the_same_index(tmp_path, image, monkeypatch):
    """``index --encoder-batch 3``: photos go through SAM's encoder together and into the
    catalog in one transaction, yet the index equals a one-by-one run, and a corrupt file
    among them is recorded alone."""
    from PIL import Image
    from skimage import data

    from usesearch.indexer import SegmentIndex
    from usesearch.indexer.store import Store

    real_save, saved_together = Store.save_images, []

    def save_images(store, photos):
        saved_together.append(sorted(os.path.basename(p.path) for p in photos if p.error is None))
        return real_save(store, photos)

    monkeypatch.setattr(Store, "save_images", save_images)

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(image).save(photos / "a.png")
    Image.fromarray(np.ascontiguousarray(data.astronaut()[::4, ::4])).save(photos / "b.png")
    (photos / "c.png").write_bytes(b"not a png")
    Image.fromarray(np.ascontiguousarray(data.chelsea()[::3, ::3])).save(photos / "d.png")
    contents = []
    for batch in ("1", "3"):
        db = tmp_path / f"db{batch}"
        saved_together.clear()
        result = CliRunner().invoke(
            app,
            [
                "index",
                str(photos),
                "--db",
                str(db),
                "--preset",
                "tiny",
                "--masker",
                "sam",
                "--points-per-side",
                "4",
                "--pred-iou-thresh",
                "-10",
                "--stability-thresh",
                "-10",
                "--box-nms-thresh",
                "1",
                "--encoder-batch",
                batch,
            ],
        )
        assert result.exit_code == 0, result.output
        contents.append(segment_table(db))
        together = [names for names in saved_together if names]  # (c.png's failure: a transaction of its own)
        assert together == ([["a.png"], ["b.png"], ["d.png"]] if batch == "1" else [["a.png", "b.png", "d.png"]])
        index = SegmentIndex.open(db)
        assert [os.path.basename(f.path) for f in index.store.failures()] == ["c.png"]
        index.close()
        assert_consistent(db)
    assert len(contents[0]) > 6 and {c[0] for c in contents[0]} == {"a.png", "b.png", "d.png"}
    assert contents[0] == contents[1]


def test_on_a_cpu_a_large_photos_masks_are_upscaled_in_groups_that_fit_and_the_masks_stay_the_same(
    sam, image, monkeypatch
):
    """64 prompts' full-size logits at once: 12 GB for a 12 MP photo, a 38 GB request
    (refused) for a 49 MP scan. They are upscaled and scored in groups sized to
    ``CPU_MASK_BYTES`` (the decoder's batch left as it is: its numbers depend on it);
    a photo of ~1 MP still takes a batch at once, and the masks are the same, bit for bit."""
    from usesearch.masks import amg_utils
    from usesearch.masks.amg import ENCODE_CHUNK

    side = sam.image_encoder.img_size
    assert amg_utils.cpu_upscale_chunk(1024, (768, 1024)) >= 3 * 64  # a batch's masks at once: as before
    assert amg_utils.cpu_upscale_chunk(1024, (3000, 4000)) < 64 and amg_utils.cpu_upscale_chunk(1024, (7000, 7000)) >= 1
    assert amg_utils.cpu_encode_chunk((768, 1024), ENCODE_CHUNK) == ENCODE_CHUNK
    assert amg_utils.cpu_encode_chunk((7000, 7000), ENCODE_CHUNK) < ENCODE_CHUNK
    settings = dict(points_per_side=8, min_mask_region_area=25, **LOW)
    # The dense pass, which scores where cells give way (cell_scoring: noisy logits)
    monkeypatch.setattr("usesearch.masks.candidate_scoring.CandidateScoring.by_cells", lambda self, *args: None)
    whole = SamMaskGenerator(sam, **settings).generate(image)
    # A budget that fits 5 masks of this photo at a time, 2 kept ones encoded: as a large photo's would.
    h, w = image.shape[:2]
    monkeypatch.setattr(amg_utils, "CPU_MASK_BYTES", 5 * (4 * side * side + 7 * h * w))
    monkeypatch.setattr("usesearch.masks.amg.cpu_encode_chunk", lambda hw, most: 2)
    generator = SamMaskGenerator(sam, **settings)
    sizes, scoring = [], []
    real = amg_utils.upscale_logits

    def counted(low_res, *args, scored=False):
        sizes.append(len(low_res)), scoring.append(scored)
        return real(low_res, *args)

    scored = partial(counted, scored=True)  # the candidates' scoring; the rest: the kept masks
    monkeypatch.setattr("usesearch.masks.candidate_scoring.upscale_logits", scored)
    monkeypatch.setattr("usesearch.masks.amg.upscale_logits", counted)
    grouped = generator.generate(image)
    assert max(sizes) <= 5 and len(sizes) > 40 and len(whole) > 20
    assert any(scoring) and not all(scoring)
    assert [(r.rle, r.box_xyxy, r.predicted_iou, r.stability_score) for r in grouped] == [
        (r.rle, r.box_xyxy, r.predicted_iou, r.stability_score) for r in whole
    ]


def test_crop_edge_and_uncrop_helpers_equal_segment_anythings():
    """Ours take the crop's numbers as scalars (stock's build tensors from lists on the
    boxes' device: a copy the GPU waits for, each prompt batch); the results must be stock's."""
    import torch
    from segment_anything.utils.amg import is_box_near_crop_edge, uncrop_boxes_xyxy, uncrop_points

    from usesearch.masks.crop_geometry import near_crop_edge, uncropped_boxes, uncropped_points

    rng = np.random.default_rng(7)
    orig_size = (480, 640)
    for crop_box in ([0, 0, 640, 480], [0, 0, 345, 259], [295, 221, 640, 480], [160, 0, 480, 259]):
        w, h = crop_box[2] - crop_box[0], crop_box[3] - crop_box[1]
        corners = np.sort(rng.integers(0, [w, h], (200, 2, 2)), axis=1).reshape(200, 4)
        edges = [[0, 0, w, h], [19, 20, w - 20, h - 21], [21, 0, w - 1, 40]]  # at, within and past the tolerance
        boxes = torch.as_tensor(np.concatenate([corners, edges]), dtype=torch.long)
        near = near_crop_edge(boxes, crop_box, orig_size)
        assert torch.equal(near, is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]]))
        assert near.sum() < len(boxes) and (near.any() or crop_box == [0, 0, 640, 480])  # (all edges the photo's)
        assert torch.equal(uncropped_boxes(boxes, crop_box), uncrop_boxes_xyxy(boxes, crop_box))
        points = torch.as_tensor(rng.uniform(0, 300, (50, 2)))  # float64, as the generator's grid
        moved = uncropped_points(points, crop_box)
        assert moved.dtype == torch.float64 and torch.equal(moved, uncrop_points(points, crop_box))


def test_the_whole_photos_crop_keeps_every_candidate_without_selecting(monkeypatch):
    """Its edges are the photo's, so no box is near a crop edge that is not the photo's:
    the candidates come back as they are (no mask, no selection, no GPU wait)."""
    import torch

    from usesearch.masks import amg_utils, crop_geometry

    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 630, 470], [300, 200, 640, 480]])
    cands = amg_utils.Candidates(
        torch.zeros(3, 1, 4, 4), torch.ones(3), torch.ones(3), boxes, torch.zeros(3, 2), torch.zeros(3)
    )
    assert not crop_geometry.near_crop_edge(boxes, [0, 0, 640, 480], (480, 640)).any()  # what it would compute
    monkeypatch.setattr(crop_geometry, "near_crop_edge", lambda *a: pytest.fail("computed for the whole photo"))
    assert crop_geometry.off_crop_edge(cands, [0, 0, 640, 480], (480, 640)) is cands
