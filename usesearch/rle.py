"""COCO masks, through pycocotools: the one place masks become RLE and back.

The convention everywhere else: compressed RLE as ``{"size": [h, w], "counts": str}``
(JSON-friendly ``str`` counts); pycocotools wants ``bytes`` counts, and this module
converts at its edge. Polygons and uncompressed RLE come in through
``segmentation_to_rle``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO ``segmentation`` (polygons, uncompressed RLE or compressed RLE with str or
    bytes counts) -> compressed RLE with bytes counts, as pycocotools wants it."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return _pycoco(segmentation)


def _pycoco(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def to_str(rle: dict) -> dict:
    """pycocotools' RLE (bytes counts) -> ours (str counts)."""
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


_ours = to_str


def encode(mask: np.ndarray) -> dict:
    """One bool (or 0/1) mask [H, W] -> compressed RLE with str counts."""
    return _ours(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def encode_stack(masks) -> list[dict]:
    """Masks [N, H, W] (numpy or a torch tensor on any device) -> RLEs, in one
    pycocotools call (it wants column-major H x W x N uint8)."""
    if not len(masks):
        return []
    if not isinstance(masks, np.ndarray):  # a torch tensor: reorder on its own device first
        import torch

        fortran = masks.transpose(1, 2).contiguous().to(torch.uint8).cpu().numpy().transpose(2, 1, 0)
    else:
        fortran = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    return [_ours(rle) for rle in mask_utils.encode(fortran)]


def decode(segmentation: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
    """An RLE (str or bytes counts), or any COCO segmentation given the image size ->
    bool [H, W]."""
    if isinstance(segmentation, dict) and not isinstance(segmentation["counts"], list):
        rle = _pycoco(segmentation)
    else:
        rle = segmentation_to_rle(segmentation, height, width)
    return mask_utils.decode(rle).astype(bool)


def decode_stack(rles: list[dict], hw: tuple[int, int] | None = None) -> np.ndarray:
    """RLEs of one image -> bool [N, H, W], C-contiguous, in one pycocotools call."""
    if not rles:
        return np.zeros((0, *(hw or (0, 0))), bool)
    return mask_utils.decode([_pycoco(r) for r in rles]).transpose(2, 0, 1).astype(bool, order="C")


def iou_matrix(rles: list[dict]) -> np.ndarray:
    """[N, N] mask IoU between the RLEs (of one image)."""
    coco = [_pycoco(r) for r in rles]
    return np.asarray(mask_utils.iou(coco, coco, [0] * len(coco))).reshape(len(coco), len(coco))


def area(rle: dict) -> int:
    return int(mask_utils.area(_pycoco(rle)))


def bbox(rle: dict) -> list[int]:
    """[x, y, w, h] (COCO: w = x1 - x0 + 1)."""
    return [int(v) for v in mask_utils.toBbox(_pycoco(rle))]
