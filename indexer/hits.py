"""What a search returns (``Hit``), and how its candidates become hits: the filters
checked on candidates rather than resolved in the database, applied best first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from usesearch.masks import rle

from .records import PROPOSAL, SegmentFacts, SegmentRow

if TYPE_CHECKING:
    from .selection import Labels, Selection

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
    iscrowd: bool | None = None  # an annotation's crowd flag, as its dataset gave it

    @classmethod
    def from_row(cls, row: SegmentRow, rank: int, score: float) -> Hit:
        """The hit of a stored segment, with everything its row says about it."""
        return cls(
            rank=rank,
            score=min(1.0, max(-1.0, float(score))),  # a cosine (float16 rows put a mask's own at 1.00006)
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
            iscrowd=row.iscrowd,
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


H = TypeVar("H", bound=Hit)


def to_hits(
    rows: dict[int, SegmentRow],
    scores: np.ndarray,
    ids: np.ndarray,
    k: int,
    per_image: bool,
    checked: Selection,
    distinct: bool = False,
) -> list[Hit]:
    """The first ``k`` hits among candidates (``scores``, ``ids``, best first, with
    their ``rows``) that pass the filters a selection leaves to the candidates: the
    image ids a path glob matched, the class, split and source, then ``first_hits``'
    ``min_area``, ``per_image`` and ``distinct``."""
    candidates = (
        Hit.from_row(row, 0, float(score))
        for score, row in ((score, rows.get(int(sid))) for score, sid in zip(scores, ids))
        if row is not None and _in_selection(row, checked)  # None: removed by a commit after this search's refresh
    )
    return first_hits(candidates, k, per_image, checked.min_area, distinct)


def _in_selection(row: SegmentRow | SegmentFacts, checked: Selection) -> bool:
    """Whether a candidate passes the image and label checks a selection leaves to candidates."""
    return (checked.images is None or row.image_id in checked.images) and (
        checked.labels is None or has_labels(row, checked.labels)
    )


def passes(row: SegmentRow | SegmentFacts, checked: Selection) -> bool:
    """Whether a candidate passes every check a selection leaves to candidates."""
    return _in_selection(row, checked) and row.area >= checked.min_area


def passing_share(rows: dict[int, SegmentRow], checked: Selection) -> float:
    """The share of candidates (their ``rows``) that pass the checks a selection leaves
    to the candidates (image, class, split, source, min_area): where it is far below
    the share of the index that passes them, the filter's segments lie elsewhere."""
    passing = sum(1 for row in rows.values() if passes(row, checked))
    return passing / len(rows) if rows else 0.0


def has_labels(row: SegmentRow | SegmentFacts, labels: Labels) -> bool:
    """Whether the row is of this class, split and source (None: any)."""
    label, split, source = labels
    return (
        (label is None or row.category == label)
        and (split is None or row.split == split)
        and (source is None or row.source == source)
    )


def first_hits(candidates: Iterable[H], k: int, per_image: bool, min_area: int, distinct: bool) -> list[H]:
    """The first ``k`` of ``candidates`` (best first) of at least ``min_area`` pixels,
    one per image where ``per_image``, none mostly inside (or mostly around) a better one
    of its image where ``distinct``; ranked 1..k. For stored segments and SAM 3's alike."""
    hits: list[H] = []
    kept: dict[int, list[dict]] = {}  # per image, the masks of the hits kept
    for hit in candidates:
        if hit.area < min_area:
            continue
        better = kept.setdefault(hit.image_id, [])
        if per_image and better:
            continue
        if distinct and better and rle.overlap_of_smaller([hit.mask], better).max() >= DISTINCT_OVERLAP:
            continue  # a part of a better hit, or a whole around one
        better.append(hit.mask)
        hits.append(replace(hit, rank=len(hits) + 1))
        if len(hits) == k:
            break
    return hits
