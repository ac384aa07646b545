"""The class-agnostic maskers of the registry (``registry.MASKERS``, built by
``registry.build_masker``): SAM's and SAM 2.1's automatic mask generators, a
weight-free classical one (Felzenszwalb superpixels, scikit-image) for offline runs,
and bring-your-own COCO masks. What each gives, a ``Proposal``, is ``proposals.py``'s."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from usesearch.masks import rle
from usesearch.masks.coco_masker import CocoMaskFile
from usesearch.masks.proposals import Proposal, to_proposals
from usesearch.masks.settings import SAM_SETTINGS, SamSettings, mask_defining

WORK_PIXELS = 4_000_000  # the Felzenszwalb masker's working size for larger photos
# Past this many mask pixels a photo's masks go out as RLEs, one dense mask at a time:
# 64 dense masks of a 49 MP scan took 3.1 GB (5.2 GB at the run's peak).
DENSE_MASK_PIXELS = 2**30


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
        small = (max(1, round(w * shrink)), max(1, round(h * shrink)))
        work = rgb if shrink == 1.0 else np.asarray(Image.fromarray(rgb).resize(small, Image.Resampling.BILINEAR))
        min_area = max(16, int(self.min_area_frac * work.shape[0] * work.shape[1]))
        label_maps: list[np.ndarray] = []
        label_counts: list[np.ndarray] = []
        candidates: list[tuple[int, int, int]] = []
        for level, scale in enumerate(self.scales):
            labels = felzenszwalb(work, scale=scale, sigma=0.8, min_size=min_area)
            # Regions are connected by construction and min_size-bounded, so no
            # island/hole clean-up is needed; skip labels below the area floor, and a
            # region a finer scale found already (the same segment twice in every search).
            counts = np.bincount(labels.ravel())
            finer = zip(label_maps, label_counts)
            again = set().union(*(_same_regions(labels, counts, other, n) for other, n in finer))
            kept = [label for label in np.flatnonzero(counts >= min_area) if int(label) not in again]
            candidates += [(-int(counts[label]), level, int(label)) for label in kept]
            label_maps.append(labels)
            label_counts.append(counts)
        # Largest first (ties: coarser scale index, then label), and only the kept
        # ones ever become full-size masks.
        chosen = sorted(candidates)[: self.max_masks]
        if shrink != 1.0:
            label_maps = [
                np.asarray(Image.fromarray(m.astype(np.int32)).resize((w, h), Image.Resampling.NEAREST))
                for m in label_maps
            ]
        if len(chosen) * h * w > DENSE_MASK_PIXELS:
            return _rle_proposals(label_maps, [(level, label) for _, level, label in chosen])
        masks = np.empty((len(chosen), h, w), bool)
        for i, (_, level, label) in enumerate(chosen):
            np.equal(label_maps[level], label, out=masks[i])
        return to_proposals(masks)


def _rle_proposals(label_maps: list[np.ndarray], chosen: list[tuple[int, int]]) -> list[Proposal]:
    """The regions (label map, label) as RLE-only proposals, one dense mask at a time:
    what ``to_proposals`` gives of their stack, without the stack."""
    mask = np.empty(label_maps[0].shape, bool)
    proposals = []
    for level, label in chosen:
        np.equal(label_maps[level], label, out=mask)
        proposals.append(Proposal.of_rle(rle.encode(mask)))
    return proposals


def _same_regions(labels: np.ndarray, counts: np.ndarray, other: np.ndarray, other_counts: np.ndarray) -> set[int]:
    """The labels of ``labels`` whose region is exactly a region of ``other`` (``counts``,
    ``other_counts``: the pixels of each label): a pair of labels that share as many
    pixels as each has."""
    span = int(other.max()) + 1
    pairs, shared = np.unique(labels.ravel().astype(np.int64) * span + other.ravel(), return_counts=True)
    mine, theirs = np.divmod(pairs, span)
    same = (shared == counts[mine]) & (shared == other_counts[theirs])
    return set(mine[same].tolist())


class SamMasker:
    """SAM's automatic mask generator (grid point prompts, its thresholds and NMS), as
    in §4.3 of the paper: ``SamMaskGenerator``, which gives segment-anything's masks
    for the same keyword arguments without its post-processing cost."""

    name = "sam"

    def __init__(self, sam, points_per_side: int = 32, **amg_kwargs):
        from usesearch.masks.amg import SamMaskGenerator

        _check_options(self.name, SamMaskGenerator, amg_kwargs)
        self.points_per_side = points_per_side
        self.amg_kwargs = amg_kwargs
        self.generator = SamMaskGenerator(sam, points_per_side=points_per_side, **amg_kwargs)

    def params(self) -> dict:
        return {"points_per_side": self.points_per_side, **mask_defining(self.amg_kwargs)}

    @property
    def images_per_call(self) -> int:
        """Photos an indexer should hand to ``batch`` at once."""
        return self.generator.encoder_batch

    def __call__(self, rgb: np.ndarray, path: str | None = None) -> list[Proposal]:
        return self.batch([rgb])[0]

    def batch(self, rgbs: list[np.ndarray], paths: list[str] | None = None) -> list[list[Proposal]]:
        """Proposals of several photos: their image-encoder passes batched."""
        return [self._proposals(records) for records in self.generator.generate_batch(rgbs)]

    @staticmethod
    def _proposals(records) -> list[Proposal]:
        return [
            Proposal(
                rle=r.rle,
                bbox=(
                    r.box_xyxy[0],
                    r.box_xyxy[1],
                    r.box_xyxy[2] - r.box_xyxy[0] + 1,
                    r.box_xyxy[3] - r.box_xyxy[1] + 1,
                ),
                area=r.area,
                predicted_iou=r.predicted_iou,
                stability_score=r.stability_score,
            )
            for r in records
            if r.area > 0
        ]


def _check_options(masker: str, generator, given: dict, fixed: tuple[str, ...] = ()) -> None:
    """The keyword arguments a masker passes on must be its generator's own (read
    from the generator's signature, so the two cannot drift apart)."""
    import inspect

    options = [n for n in inspect.signature(generator).parameters if n != "model" and n not in fixed]
    unknown = sorted(set(given) - set(options))
    if unknown:
        named = ", ".join(SamSettings.flag(u) if u in SAM_SETTINGS else u for u in unknown)
        raise ValueError(f"the {masker} masker has no option {named}; its options: {', '.join(options)}")


class Sam2Masker:
    """SAM 2.1's automatic mask generator (the ``sam2`` package), with the same
    mask-quality options as ``--masker sam``."""

    name = "sam2"

    def __init__(self, model, model_name: str, points_per_side: int = 32, **amg_kwargs):
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        from usesearch.masks.sam2_models import automatic_mask_generator

        _check_options(self.name, SAM2AutomaticMaskGenerator, amg_kwargs, fixed=("output_mode",))
        self.model_name, self.points_per_side, self.amg_kwargs = model_name, points_per_side, amg_kwargs
        self.generator = automatic_mask_generator(model, points_per_side=points_per_side, **amg_kwargs)

    def params(self) -> dict:
        return {"model": self.model_name, "points_per_side": self.points_per_side, **self.amg_kwargs}

    def __call__(self, rgb: np.ndarray, path: str | None = None) -> list[Proposal]:
        out = []
        for r in self.generator.generate(rgb):
            if r["area"] <= 0:
                continue
            x, y, w, h = (int(v) for v in r["bbox"])  # SAM's xywh: w = x1 - x0
            out.append(
                Proposal(
                    rle=rle.to_str(r["segmentation"]),
                    bbox=(x, y, w + 1, h + 1),
                    area=int(r["area"]),
                    predicted_iou=float(r["predicted_iou"]),
                    stability_score=float(r["stability_score"]),
                )
            )
        return out


class CocoMasker:
    """Masks a user brings from any segmenter, as a COCO file (``coco_masker.py``)."""

    name = "coco"

    def __init__(self, masks_json: str | os.PathLike):
        self.file = CocoMaskFile(masks_json)
        self.masks_json = self.file.masks_json

    def params(self) -> dict:
        return {"masks_json": self.masks_json, "masks_sha256": self.file.sha256}

    def __call__(self, rgb: np.ndarray, path: str | None = None) -> list[Proposal]:
        return to_proposals(self.file.masks(rgb.shape[:2], path))
