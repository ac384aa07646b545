"""``--masker coco``'s file: masks a user brings from any segmenter, as a COCO annotations
file (RLE or polygons; no categories needed), each checked before pycocotools reads it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from usesearch.errors import CocoFileError, UsesearchError
from usesearch.masks import rle


class CocoMaskFile:
    """Masks from a COCO annotations JSON (RLE or polygons), matched to images by
    file name relative to the JSON's ``images[].file_name`` (``maskers.CocoMasker``
    makes them proposals)."""

    def __init__(self, masks_json: str | os.PathLike):
        from usesearch.io.coco_json import load_coco_json

        self.masks_json = str(Path(masks_json).resolve())
        coco = load_coco_json(masks_json, needs=("images", "annotations"))  # a segmenter's output: no categories
        by_image: dict[int, list] = {}
        for i, ann in enumerate(coco["annotations"]):
            if not isinstance(ann, dict) or not {"image_id", "segmentation"} <= ann.keys():
                raise CocoFileError(f"{masks_json}: annotation #{i} has no image_id or no segmentation")
            by_image.setdefault(ann["image_id"], []).append(ann)
        for i, img in enumerate(coco["images"]):
            if not isinstance(img, dict) or not {"id", "file_name"} <= img.keys():
                raise CocoFileError(f"{masks_json}: image entry #{i} has no id or no file_name")
        self.by_name = {img["file_name"]: (img, by_image.get(img["id"], [])) for img in coco["images"]}

    def _lookup(self, path: str):
        parts = Path(path).parts
        for i in range(len(parts)):  # longest matching suffix of the path
            hit = self.by_name.get("/".join(parts[i:]))
            if hit:
                return hit
        return None

    def masks(self, hw: tuple[int, int], path: str | None = None) -> np.ndarray:
        """[n, h, w] bool: the photo's masks (none where the file has no entry for it)."""
        h, w = hw
        hit = self._lookup(path or "")
        if hit is None:
            return np.zeros((0, h, w), bool)
        info, anns = hit
        if (info.get("height"), info.get("width")) not in ((h, w), (None, None)):
            raise UsesearchError(f"{path}: masks are {info['height']}x{info['width']} but the image is {h}x{w}")
        masks = []
        for ann in anns:
            try:  # pycocotools reads past a short RLE's end, and takes one of another size as it is
                mask = rle.decode(rle.checked(ann["segmentation"], h, w), h, w)
            except ValueError as exc:  # the photo fails, named: indexing the rest of its masks would lose one
                raise UsesearchError(f"{path}: the mask of annotation {ann.get('id', '?')} is broken: {exc}") from None
            if mask.any():
                masks.append(mask)
        return np.stack(masks) if masks else np.zeros((0, h, w), bool)
