"""What a search returns (``Hit``), and how its candidates become hits: the filters
checked on candidates rather than resolved in the database, applied best first."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from usesearch.masks import rle

from .records import PROPOSAL, SegmentRow

DISTINCT_OVERLAP = 0.8  # --distinct: this share of the smaller mask inside the other makes two hits one region


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    segment_id: int
    image_id: int
    image: str
    bbox: tuple[int, int, int, int]  # x, y, w, h
    area: int
    mask: dict[str, Any]  # COCO compressed RLE: {"size": [h, w], "counts": str}
    predicted_iou: float | None = None
    stability_score: float | None = None
    image_fs_path: bytes | None = field(default=None, repr=False)  # the exact file, for opening it
    # Where the segment came from: a SAM "proposal", a labelled dataset's "annotation"
    # (index --coco) with its id, class and split, or a "sam3" instance (query --refine).
    source: str = PROPOSAL
    annotation_id: int | None = None
    category: str | None = None
    split: str | None = None

    @classmethod
    def from_row(cls, row: SegmentRow, rank: int, score: float) -> Hit:
        """The hit of a stored segment, with everything its row says about it."""
        return cls(
            rank=rank,
            score=score,
            segment_id=row.id,
            image_id=row.image_id,
            image=row.image_path,
            bbox=row.bbox,
            area=row.area,
            mask={"size": list(row.image_hw), "counts": row.rle_counts},
            predicted_iou=row.predicted_iou,
            stability_score=row.stability_score,
            image_fs_path=row.image_fs_path,
            source=row.source,
            annotation_id=row.annotation_id,
            category=row.category,
            split=row.split,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["image_fs_path"]
        out["bbox"] = list(self.bbox)
        return out

    @property
    def file(self) -> str | bytes:
        """What ``open`` takes for this hit's image, also for names that are not UTF-8."""
        return self.image_fs_path if self.image_fs_path is not None else self.image


def to_hits(
    rows: dict[int, SegmentRow],
    scores: np.ndarray,
    ids: np.ndarray,
    k: int,
    per_image: bool,
    images: set[int] | None,
    min_area: int,
    distinct: bool = False,
) -> list[Hit]:
    """The first ``k`` hits among candidates (``scores``, ``ids``, best first, with
    their ``rows``) that pass the filters checked on candidates: ``min_area``, the
    image ids a path glob matched (``images``), ``per_image`` and ``distinct``."""
    hits: list[Hit] = []
    seen_images: set[int] = set()
    kept_masks: dict[int, list[dict]] = {}  # per image, the masks of the hits kept (distinct)
    for score, sid in zip(scores, ids):
        row: SegmentRow | None = rows.get(int(sid))
        if row is None:  # removed by a commit after this search's refresh
            continue
        if row.area < min_area or (images is not None and row.image_id not in images):
            continue
        if per_image:
            if row.image_id in seen_images:
                continue
            seen_images.add(row.image_id)
        hit = Hit.from_row(row, len(hits) + 1, float(score))
        if distinct:
            better = kept_masks.setdefault(row.image_id, [])
            if better and rle.overlap_of_smaller([hit.mask], better).max() >= DISTINCT_OVERLAP:
                continue  # a part of a better hit, or a whole around one
            better.append(hit.mask)
        hits.append(hit)
        if len(hits) == k:
            break
    return hits
