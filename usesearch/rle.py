"""COCO mask encodings, through pycocotools."""

from __future__ import annotations

from typing import Any

from pycocotools import mask as mask_utils


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO ``segmentation`` (polygons, uncompressed RLE or compressed RLE with str or
    bytes counts) -> compressed RLE with bytes counts, as pycocotools wants it."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
