"""A crop's geometry in the mask generator: candidates near a crop's edge dropped, boxes
and points moved from a crop's frame to the photo's. Written by hand from
segment-anything's ``utils/amg.py``: its helpers build small tensors from Python lists
on the boxes' device, each a copy to a GPU that waits for the card, on every prompt
batch and crop. The crop's numbers go in as Python scalars instead; the results are
the same (tests/test_amg.py compares them with stock's)."""

from __future__ import annotations

import torch
from segment_anything.utils.transforms import ResizeLongestSide

from usesearch.masks.amg_utils import Candidates


def off_crop_edge(cands: Candidates, crop_box, orig_size) -> Candidates:
    """The candidates whose box keeps off the crop's edges (but for the photo's): all of
    them in the whole photo's crop, whose edges are the photo's (without crop layers, the
    only crop: no mask computed, no selection, no wait for a GPU)."""
    if list(crop_box) == [0, 0, orig_size[1], orig_size[0]]:
        return cands
    return cands[~near_crop_edge(cands.boxes, crop_box, orig_size)]


def near_crop_edge(boxes: torch.Tensor, crop_box, orig_size, atol: float = 20.0) -> torch.Tensor:
    """``is_box_near_crop_edge``: for crop-relative ``boxes`` (XYXY), True where a side
    lies within ``atol`` of the crop's edge but not of the photo's (``orig_size``: h, w)."""
    x0, y0, x1, y1 = crop_box
    height, width = orig_size
    near = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for side, offset, crop_edge, photo_edge in (
        (0, x0, x0, 0),
        (1, y0, y0, 0),
        (2, x0, x1, width),
        (3, y0, y1, height),
    ):
        at = (boxes[:, side] + offset).float()  # (stock uncrops in the boxes' dtype, then compares as float)
        near |= ((at - crop_edge).abs() <= atol) & ((at - photo_edge).abs() > atol)
    return near


def uncropped_boxes(boxes: torch.Tensor, crop_box) -> torch.Tensor:
    """``uncrop_boxes_xyxy`` for [n, 4] boxes: moved by the crop's corner."""
    x0, y0 = crop_box[:2]
    if not (x0 or y0):
        return boxes
    return torch.stack((boxes[:, 0] + x0, boxes[:, 1] + y0, boxes[:, 2] + x0, boxes[:, 3] + y0), 1)


def uncropped_points(points: torch.Tensor, crop_box) -> torch.Tensor:
    """``uncrop_points`` for [n, 2] points: moved by the crop's corner."""
    x0, y0 = crop_box[:2]
    if not (x0 or y0):
        return points
    return torch.stack((points[:, 0] + x0, points[:, 1] + y0), 1)


def to_input_frame(points: torch.Tensor, crop_hw: tuple[int, int], target_length: int) -> torch.Tensor:
    """``ResizeLongestSide.apply_coords`` on the points' device, in their own dtype (float64,
    as stock's numpy gives): the same numbers, without a second copy to the device."""
    old_h, old_w = crop_hw
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(old_h, old_w, target_length)
    return torch.stack((points[:, 0] * (new_w / old_w), points[:, 1] * (new_h / old_h)), 1)
