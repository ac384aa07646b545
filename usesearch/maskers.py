"""Class-agnostic mask proposals: SAM's automatic mask generator, or a weight-free
classical one (Felzenszwalb superpixels, scikit-image) for offline runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from segment_anything.utils.amg import batched_mask_to_box

WORK_PIXELS = 4_000_000  # the Felzenszwalb masker's working size for larger photos


@dataclass
class Proposal:
    mask: np.ndarray  # bool [H, W]
    bbox: tuple[int, int, int, int]  # x, y, w, h (COCO)
    area: int
    predicted_iou: float | None = None
    stability_score: float | None = None


class FelzenszwalbMasker:
    """Superpixels merged at two scales so that regions span parts and wholes, like
    SAM's multi-granularity output; no weights needed."""

    name = "felzenszwalb"

    def __init__(self, scales: tuple[float, ...] = (100.0, 400.0), min_area_frac: float = 0.002, max_masks: int = 64):
        self.scales = scales
        self.min_area_frac = min_area_frac
        self.max_masks = max_masks

    def params(self) -> dict:
        return {"scales": list(self.scales), "min_area_frac": self.min_area_frac, "max_masks": self.max_masks}

    def __call__(self, rgb: np.ndarray, path: str | None = None) -> list[Proposal]:
        from skimage.segmentation import felzenszwalb

        h, w = rgb.shape[:2]
        # Superpixels of a huge photo are found at WORK_PIXELS and their label map
        # scaled back: the graph of a 16 MP image alone would take gigabytes.
        shrink = min(1.0, (WORK_PIXELS / (h * w)) ** 0.5)
        work = rgb if shrink == 1.0 else np.asarray(
            Image.fromarray(rgb).resize((max(1, round(w * shrink)), max(1, round(h * shrink))), Image.BILINEAR))
        min_area = max(16, int(self.min_area_frac * work.shape[0] * work.shape[1]))
        label_maps, candidates = [], []
        for level, scale in enumerate(self.scales):
            labels = felzenszwalb(work, scale=scale, sigma=0.8, min_size=min_area)
            # Regions are connected by construction and min_size-bounded, so no
            # island/hole clean-up is needed; skip labels below the area floor.
            counts = np.bincount(labels.ravel())
            candidates += [(-int(counts[label]), level, int(label)) for label in np.flatnonzero(counts >= min_area)]
            label_maps.append(labels)
        # Largest first (ties: coarser scale index, then label), and only the kept
        # ones ever become full-size masks.
        chosen = sorted(candidates)[: self.max_masks]
        if shrink != 1.0:
            label_maps = [np.asarray(Image.fromarray(m.astype(np.int32)).resize((w, h), Image.NEAREST)) for m in label_maps]
        masks = np.empty((len(chosen), h, w), bool)
        for i, (_, level, label) in enumerate(chosen):
            np.equal(label_maps[level], label, out=masks[i])
        return to_proposals(masks)


class SamMasker:
    """segment-anything's SamAutomaticMaskGenerator (grid point prompts, its
    thresholds and NMS), as in §4.3 of the paper."""

    name = "sam"

    def __init__(self, sam, points_per_side: int = 32, **amg_kwargs):
        from segment_anything import SamAutomaticMaskGenerator

        self.points_per_side = points_per_side
        self.amg_kwargs = amg_kwargs
        self.generator = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, **amg_kwargs)

    def params(self) -> dict:
        return {"points_per_side": self.points_per_side, **self.amg_kwargs}

    def __call__(self, rgb: np.ndarray, path: str | None = None) -> list[Proposal]:
        records = self.generator.generate(rgb)
        return [
            Proposal(
                mask=r["segmentation"],
                bbox=tuple(int(v) for v in r["bbox"]),
                area=int(r["area"]),
                predicted_iou=float(r["predicted_iou"]),
                stability_score=float(r["stability_score"]),
            )
            for r in records
            if r["area"] > 0
        ]


def to_proposals(masks: np.ndarray) -> list[Proposal]:
    if len(masks) == 0:
        return []
    boxes = batched_mask_to_box(torch.from_numpy(masks)).tolist()
    return [
        Proposal(mask=m, bbox=(x0, y0, x1 - x0 + 1, y1 - y0 + 1), area=int(m.sum()))
        for m, (x0, y0, x1, y1) in zip(masks, boxes)
    ]


def stack_masks(proposals: list[Proposal], hw: tuple[int, int]) -> np.ndarray:
    """[N, H, W] bool masks of proposals (N may be 0). Proposals made by
    ``to_proposals`` are rows of one stack already: that stack is returned as is,
    not copied (a 16 MP photo's 64 masks are 1 GB)."""
    if not proposals:
        return np.zeros((0, *hw), bool)
    base = proposals[0].mask.base
    if (isinstance(base, np.ndarray) and base.shape == (len(proposals), *hw) and base.dtype == bool
            and all(p.mask.base is base and p.mask.shape == hw and np.may_share_memory(p.mask, base[i]) for i, p in enumerate(proposals))):
        return base
    return np.stack([p.mask for p in proposals])
