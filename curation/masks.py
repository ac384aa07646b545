"""Mask generation from box prompts (paper §3.1) and mask NMS merging.

Per box: SAM with the box as prompt and multimask output; keep the mask with the
highest stability score (computed as segment-anything does); drop it unless its
predicted IoU and stability both reach 0.6 (§4.1 lowers SAM's defaults to 0.6);
fill small holes and remove small islands. A box over 90% of the image becomes the
whole-image mask without SAM. Then mask NMS at IoU 0.7 per image, the texts of
suppressed masks joining the kept mask's list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.utils.amg import remove_small_regions
from torchvision.ops import box_convert

from usesearch.masks import rle
from usesearch.masks.region import pick_most_stable

from .records import BoxText, Segment, TextRef


@dataclass(frozen=True)
class BoxMaskConfig:
    pred_iou_thresh: float = 0.6  # paper §4.1
    stability_score_thresh: float = 0.6  # paper §4.1
    whole_image_fraction: float = 0.9  # paper §3.1: larger boxes become the whole image
    min_region_area: int = 100  # holes and islands smaller than this are cleaned
    stability_score_offset: float = 1.0  # segment-anything's default


NMS_IOU = 0.7  # paper §4.1


def to_segment(mask: np.ndarray, texts: list[TextRef], score: float) -> Segment:
    encoded = rle.encode(mask)
    x, y, w, h = rle.bbox(encoded)
    return Segment(
        rle=encoded,
        bbox=(x, y, w, h),
        area=rle.area(encoded),
        texts=list(texts),
        score=float(score),
    )


def covers_image(bbox: tuple[float, float, float, float], hw: tuple[int, int], fraction: float) -> bool:
    """§3.1: a box over ``fraction`` of the image stands for the whole image. Its part
    inside the image counts (a Visual Genome box may run past an edge)."""
    x, y, w, h = bbox
    inside_w = max(0.0, min(x + w, hw[1]) - max(x, 0.0))
    inside_h = max(0.0, min(y + h, hw[0]) - max(y, 0.0))
    return inside_w * inside_h > fraction * hw[0] * hw[1]


def clean_mask(mask: np.ndarray, min_area: int) -> np.ndarray:
    """segment-anything's post-processing: fill small holes, then drop small islands."""
    mask, _ = remove_small_regions(mask, min_area, mode="holes")
    mask, _ = remove_small_regions(mask, min_area, mode="islands")
    return mask


# Boxes per decoder call: their logits are full-size floats (3 x H x W each), so a
# Visual Genome photo's hundreds of regions at once would take gigabytes.
BOX_BATCH = 64


def masks_from_boxes(
    predictor, rgb: np.ndarray, boxes: list[BoxText], cfg: BoxMaskConfig = BoxMaskConfig(), batch: int = BOX_BATCH
) -> list[Segment]:
    """``predictor`` is a segment_anything ``SamPredictor``; the image is embedded once
    and the boxes decoded ``batch`` at a time."""
    hw = rgb.shape[:2]
    out: list[Segment] = []
    prompted = []
    for box in boxes:
        if lies_outside(box.bbox, hw):  # a VG region drawn on another size of the photo: no prompt
            continue
        if covers_image(box.bbox, hw, cfg.whole_image_fraction):
            out.append(to_segment(np.ones(hw, bool), box.texts, 1.0))
        else:
            prompted.append(box)
    if not prompted:
        return out
    predictor.set_image(rgb)
    threshold = predictor.model.mask_threshold
    for start in range(0, len(prompted), batch):
        chunk = prompted[start : start + batch]
        xyxy = box_convert(torch.tensor([b.bbox for b in chunk], dtype=torch.float32), "xywh", "xyxy")
        boxes_t = predictor.transform.apply_boxes_torch(xyxy, hw).to(predictor.device)
        with torch.inference_mode():
            logits, iou_preds, _ = predictor.predict_torch(
                None, None, boxes=boxes_t, multimask_output=True, return_logits=True
            )
        for box, box_logits, box_ious in zip(chunk, logits, iou_preds):
            best, stability = pick_most_stable(box_logits, box_ious, threshold, cfg.stability_score_offset)
            if float(box_ious[best]) < cfg.pred_iou_thresh or float(stability[best]) < cfg.stability_score_thresh:
                continue
            mask = clean_mask((box_logits[best] > threshold).cpu().numpy(), cfg.min_region_area)
            if mask.any():
                out.append(to_segment(mask, box.texts, float(stability[best])))
        del logits, iou_preds
    return out


def lies_outside(bbox: tuple[float, float, float, float], hw: tuple[int, int]) -> bool:
    """Nothing of the box lies inside the photo: SAM's prompt encoder takes any
    coordinates, and such a box gave a mask of something else anyway."""
    x, y, w, h = bbox
    return min(float(hw[1]), x + w) <= max(0.0, x) or min(float(hw[0]), y + h) <= max(0.0, y)


def mask_nms(segments: list[Segment], iou_threshold: float = NMS_IOU) -> list[Segment]:
    """Keep masks in score order unless one kept overlaps by more than ``iou_threshold``;
    a suppressed mask's texts join the kept mask it overlaps most."""
    if not segments:
        return []
    order = sorted(range(len(segments)), key=lambda i: (-segments[i].score, -segments[i].area, i))
    ious = rle.iou_matrix([s.rle for s in segments])
    kept: list[int] = []
    merged: dict[int, list[TextRef]] = {}
    for i in order:
        overlapping = [j for j in kept if ious[i, j] > iou_threshold]
        if overlapping:
            target = max(overlapping, key=lambda j: ious[i, j])
            merged[target].extend(t for t in segments[i].texts if t not in merged[target])
        else:
            kept.append(i)
            merged[i] = list(dict.fromkeys(segments[i].texts))
    return [
        Segment(
            rle=segments[i].rle, bbox=segments[i].bbox, area=segments[i].area, texts=merged[i], score=segments[i].score
        )
        for i in kept
    ]
