"""What every masker gives: a ``Proposal`` (a dense mask, a COCO RLE, or both, each
made from the other on first use), and a photo's proposals as one stack of masks for
an embedder or an evaluation. The maskers and their registry are ``maskers.py``'s;
what only reads proposals (the indexer's embedding step, ``index --coco``'s plans,
the CLI's evaluation) imports this module alone."""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box

from usesearch.masks import rle


class Proposal:
    """One mask proposal. It carries a dense mask, a COCO RLE, or both: whichever the
    masker made, the other is made on first use (so SAM's RLEs go to the store as
    they are, and dense masks exist only where a consumer asks for them)."""

    __slots__ = ("_mask", "_rle", "bbox", "area", "predicted_iou", "stability_score")

    def __init__(
        self,
        mask: np.ndarray | None = None,
        bbox: tuple[int, int, int, int] = (0, 0, 0, 0),
        area: int = 0,
        predicted_iou: float | None = None,
        stability_score: float | None = None,
        rle: dict | None = None,
    ):
        if mask is None and rle is None:
            raise ValueError("a proposal needs a mask or an RLE")
        self._mask, self._rle = mask, rle
        self.bbox = bbox  # x, y, w, h (COCO: w = x1 - x0 + 1)
        self.area = area
        self.predicted_iou = predicted_iou
        self.stability_score = stability_score

    @classmethod
    def of_rle(cls, encoded: dict) -> Proposal:
        """A proposal of an RLE alone: its box and area read from the RLE."""
        x, y, w, h = rle.bbox(encoded)
        return cls(rle=encoded, bbox=(x, y, w, h), area=rle.area(encoded))

    @property
    def mask(self) -> np.ndarray:
        """bool [H, W]."""
        if self._mask is None:
            self._mask = rle.decode(self._rle)
        return self._mask

    @property
    def rle(self) -> dict:
        """COCO compressed RLE, ``{"size": [h, w], "counts": str}``."""
        if self._rle is None:
            self._rle = rle.encode(self.mask)
        return self._rle

    def __repr__(self) -> str:
        return (
            f"Proposal(bbox={self.bbox}, area={self.area}, predicted_iou={self.predicted_iou}, "
            f"stability_score={self.stability_score})"
        )


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
    if all(p._mask is None for p in proposals):  # RLEs only (SAM): one pycocotools call
        return rle.decode_stack([p.rle for p in proposals], hw)
    base = proposals[0].mask.base
    if (
        isinstance(base, np.ndarray)
        and base.shape == (len(proposals), *hw)
        and base.dtype == bool
        and all(
            p.mask.base is base and p.mask.shape == hw and np.may_share_memory(p.mask, base[i])
            for i, p in enumerate(proposals)
        )
    ):
        return base
    return np.stack([p.mask for p in proposals])


def proposal_masks(proposals: list[Proposal], hw: tuple[int, int]) -> np.ndarray | rle.RleStack:
    """The masks to hand an embedder: SAM's RLEs as they are (the pooling weights
    are read from the runs; nothing dense is made), otherwise ``stack_masks``."""
    if proposals and all(p._mask is None for p in proposals):
        return rle.RleStack([p.rle for p in proposals], hw)
    return stack_masks(proposals, hw)
