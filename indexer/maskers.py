"""Choosing a masker for an index run, including bring-your-own COCO masks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from usesearch.config import PresetConfig
from usesearch.errors import UsesearchError
from usesearch.maskers import FelzenszwalbMasker, Proposal, SamMasker, to_proposals
from usesearch.rle import segmentation_to_rle
from usesearch.sam import load_sam

MASKERS = ("sam", "felzenszwalb", "coco")
# SAM's mask-quality settings as the CLI spells them.
SAM_FLAGS = {
    "points_per_side": "--points-per-side", "points_per_batch": "--points-per-batch", "pred_iou_thresh": "--pred-iou-thresh",
    "stability_score_thresh": "--stability-thresh", "box_nms_thresh": "--box-nms-thresh", "crop_n_layers": "--crop-layers",
    "min_mask_region_area": "--min-region-area",
}


class CocoMasker:
    """Masks from a COCO annotations JSON (RLE or polygons), matched to images by
    file name relative to the JSON's ``images[].file_name``; lets users bring masks
    from any segmenter."""

    name = "coco"

    def __init__(self, masks_json: str | os.PathLike):
        self.masks_json = str(Path(masks_json).resolve())
        coco = json.loads(Path(masks_json).read_text())
        by_image: dict[int, list] = {}
        for ann in coco.get("annotations", []):
            by_image.setdefault(ann["image_id"], []).append(ann)
        self.by_name = {img["file_name"]: (img, by_image.get(img["id"], [])) for img in coco.get("images", [])}

    def params(self) -> dict:
        return {"masks_json": self.masks_json}

    def _lookup(self, path: str):
        parts = Path(path).parts
        for i in range(len(parts)):  # longest matching suffix of the path
            hit = self.by_name.get("/".join(parts[i:]))
            if hit:
                return hit
        return None

    def __call__(self, rgb: np.ndarray, path: str | None = None) -> list[Proposal]:
        hit = self._lookup(path or "")
        if hit is None:
            return []
        info, anns = hit
        h, w = rgb.shape[:2]
        if (info.get("height"), info.get("width")) not in ((h, w), (None, None)):
            raise UsesearchError(f"{path}: masks are {info['height']}x{info['width']} but the image is {h}x{w}")
        masks = []
        for ann in anns:
            mask = mask_utils.decode(segmentation_to_rle(ann["segmentation"], h, w)).astype(bool)
            if mask.any():
                masks.append(mask)
        return to_proposals(np.stack(masks) if masks else np.zeros((0, h, w), bool))


def build_masker(name: str | None, preset: PresetConfig, device: str | None = None, **options):
    """``None`` picks SAM, except for the random-weight tiny preset whose SAM gives
    noise: there the weight-free Felzenszwalb masker gives real-looking regions."""
    if name is None:
        name = "felzenszwalb" if preset.sam.checkpoint is None and "sam_checkpoint" not in options else "sam"
    misplaced = [SAM_FLAGS[k] for k in options if k in SAM_FLAGS] if name != "sam" else []
    if misplaced:
        own = {"felzenszwalb": "none", "coco": "--masks FILE.json"}.get(name, "none")
        raise UsesearchError(f"{', '.join(misplaced)} apply to --masker sam only; this run uses masker {name} "
                             f"(its options: {own}){' (the default for the random-weight tiny preset)' if name == 'felzenszwalb' else ''}")
    if name == "sam":
        sam = load_sam(preset.sam, preset.name, options.pop("sam_checkpoint", None), device or "cpu")
        return SamMasker(sam, **options)
    if name == "felzenszwalb":
        return FelzenszwalbMasker(**options)
    if name == "coco":
        if "masks_json" not in options:
            raise UsesearchError("--masker coco needs --masks FILE.json (COCO annotations with RLE or polygons)")
        return CocoMasker(options["masks_json"])
    raise UsesearchError(f"unknown masker {name!r}; choose one of {', '.join(MASKERS)}")
