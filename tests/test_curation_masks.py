"""Paper §3.1/§4.1 mask constants and mask NMS, on hand-made masks and a tiny SAM."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from segment_anything import SamPredictor
from segment_anything.utils.amg import calculate_stability_score

import usesearch
from usesearch.curation.masks import (
    NMS_IOU,
    BoxMaskConfig,
    clean_mask,
    mask_nms,
    masks_from_boxes,
    pick_most_stable,
    to_segment,
)
from usesearch.curation.records import BoxText, TextRef
from usesearch.masks.sam import load_sam


def test_paper_constants():
    cfg = BoxMaskConfig()
    assert (cfg.pred_iou_thresh, cfg.stability_score_thresh, cfg.whole_image_fraction, NMS_IOU) == (0.6, 0.6, 0.9, 0.7)


def test_most_stable_mask_is_chosen_by_segment_anythings_score():
    logits = torch.zeros(3, 20, 20) - 5
    logits[0, 5:15, 5:15] = 0.5  # barely above threshold: unstable
    logits[1, 2:18, 2:18] = 8.0  # crisp: stable
    logits[2, 0:10, :] = torch.linspace(-3, 3, 20)  # a ramp: unstable
    best, stability = pick_most_stable(logits, torch.tensor([0.9, 0.5, 0.95]), 0.0, 1.0)
    assert best == 1  # highest stability wins, not highest predicted IoU
    torch.testing.assert_close(stability, calculate_stability_score(logits, 0.0, 1.0))


def test_clean_mask_fills_small_holes_and_drops_small_islands():
    mask = np.zeros((60, 60), bool)
    mask[10:50, 10:50] = True
    mask[20:24, 20:24] = False  # a 16 px hole
    mask[55:57, 55:57] = True  # a 4 px island
    cleaned = clean_mask(mask, min_area=50)
    assert cleaned[20:24, 20:24].all() and not cleaned[55:57, 55:57].any()


@pytest.fixture(scope="module")
def predictor():
    return SamPredictor(load_sam(usesearch.get_preset("tiny").sam, "tiny"))


def test_box_over_ninety_percent_is_the_whole_image_without_sam():
    class NoSam:
        def set_image(self, *_):
            raise AssertionError("SAM must not run for a whole-image box")

    rgb = np.zeros((50, 40, 3), np.uint8)
    big = BoxText((0, 0, 39, 47), [TextRef("the room", "mllm_caption", "phrase")])  # 93% of the image
    [seg] = masks_from_boxes(NoSam(), rgb, [big])
    assert seg.area == 50 * 40 and seg.bbox == (0, 0, 40, 50) and seg.texts == big.texts
    small = BoxText((0, 0, 30, 40), big.texts)  # 60%: goes to SAM
    with pytest.raises(AssertionError):
        masks_from_boxes(NoSam(), rgb, [small])
    past_edge = BoxText((20, 0, 39, 50), big.texts)  # 39 x 50 as written, but only 20 x 50 (50%) inside
    with pytest.raises(AssertionError):
        masks_from_boxes(NoSam(), rgb, [past_edge])
    outside = BoxText((600, 600, 10, 10), big.texts)  # a VG region of another size of the photo: no prompt
    assert masks_from_boxes(NoSam(), rgb, [outside]) == []


def test_box_prompts_run_through_sam_and_respect_thresholds(predictor, photo):
    box = BoxText((20, 20, 60, 60), [TextRef("a face", "vg", "region")])
    strict = masks_from_boxes(predictor, photo, [box], BoxMaskConfig(pred_iou_thresh=2.0))
    assert strict == []  # nothing reaches an impossible predicted IoU
    loose = masks_from_boxes(
        predictor, photo, [box], BoxMaskConfig(pred_iou_thresh=-10, stability_score_thresh=-10, min_region_area=0)
    )
    assert len(loose) == 1
    for seg in loose:
        assert (
            mask_utils.decode({"size": seg.rle["size"], "counts": seg.rle["counts"].encode()}).shape == photo.shape[:2]
        )
        assert seg.texts == box.texts


def test_boxes_decoded_in_batches_give_the_masks_of_one_call(predictor, photo):
    """Batching bounds the full-size logits' memory; the masks stay the same."""
    boxes = [BoxText((x, y, 30, 40), [TextRef(f"box {x} {y}", "vg", "region")]) for x in (5, 40, 80) for y in (5, 60)]
    loose = BoxMaskConfig(pred_iou_thresh=-10, stability_score_thresh=-10, min_region_area=0)
    whole = masks_from_boxes(predictor, photo, boxes, loose, batch=len(boxes))
    assert len(whole) == len(boxes)
    for batch in (1, 4):
        batched = masks_from_boxes(predictor, photo, boxes, loose, batch=batch)
        assert [s.texts for s in batched] == [s.texts for s in whole]
        assert [s.rle for s in batched] == [s.rle for s in whole]


def _square(size, x, y, w, h, text):
    mask = np.zeros((size, size), bool)
    mask[y : y + h, x : x + w] = True
    return to_segment(mask, [TextRef(text, "gt_caption", "phrase")], 1.0)


def test_nms_merges_texts_of_duplicates_into_the_kept_mask():
    a = _square(40, 0, 0, 20, 20, "a cat")
    b = _square(40, 1, 0, 20, 20, "the cat")  # IoU 0.9 with a
    c = _square(40, 20, 20, 20, 20, "a dog")
    kept = mask_nms([a, b, c])
    assert len(kept) == 2
    assert [t.text for t in kept[0].texts] == ["a cat", "the cat"] and [t.text for t in kept[1].texts] == ["a dog"]


boxes = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(st.lists(boxes, min_size=1, max_size=8), st.floats(0.1, 0.9))
def test_nms_properties(box_list, threshold):
    segs = [_square(32, x, y, w, h, f"t{i}") for i, (x, y, w, h) in enumerate(box_list)]
    kept = mask_nms(segs, threshold)
    inputs = {s.rle["counts"] for s in segs}
    assert {k.rle["counts"] for k in kept} <= inputs  # output is a subset of the input masks
    rles = [{"size": k.rle["size"], "counts": k.rle["counts"].encode()} for k in kept]
    if len(rles) > 1:
        ious = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)))
        assert (ious[~np.eye(len(rles), dtype=bool)] <= threshold).all()  # no kept pair above it
    survived = {t.text for k in kept for t in k.texts}
    assert survived == {f"t{i}" for i in range(len(segs))}  # every text survives somewhere
