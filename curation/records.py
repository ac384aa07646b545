"""Explicit records that flow between curation stages and into the dataset files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from usesearch.io.coco_dataset import ImageEntry, Problem

# Where a text came from (paper §3.1 sources) and what kind of text it is.
SOURCES = ("gt_caption", "mllm_caption", "vg", "coco_category")
KINDS = ("caption", "phrase", "expression", "region", "category", "crowd")  # crowd: an iscrowd=1 region's class
# The kinds a segment's text can be: a caption reaches segments as its phrases and expressions.
SEGMENT_KINDS = tuple(kind for kind in KINDS if kind != "caption")


@dataclass(frozen=True)
class TextRef:
    text: str
    source: str  # one of SOURCES
    kind: str  # one of KINDS


@dataclass
class BoxText:
    """A box (x, y, w, h in pixels) and the texts it grounds."""

    bbox: tuple[float, float, float, float]
    texts: list[TextRef]
    score: float = 1.0


@dataclass
class ImageItem:
    """One image as a source reader yields it, before any model runs."""

    path: str
    captions: list[TextRef] = field(default_factory=list)  # to be grounded
    mllm_caption: bool = False  # folders and caption datasets get an MLLM caption too
    boxes: list[BoxText] = field(default_factory=list)  # human boxes (VG): straight to SAM
    segments: list[Segment] = field(default_factory=list)  # human masks, made already
    # COCO instances: the entry whose masks are made at the photo's real size, once it is read.
    annotations: ImageEntry | None = None
    # Faults the reader found (a broken annotation, a missing photo): recorded, the rest curated.
    problems: list[Problem] = field(default_factory=list)
    photo: bool = True  # False: an item that only carries problems (no photo to curate)
    error: Exception | None = None  # a folder of photos that could not be listed, a broken link: its failure
    missing: bool = False  # a photo the source names and its --images folder lacks (photo False): a failure


@dataclass
class Segment:
    """A mask with its texts: the training unit. ``rle`` is COCO compressed RLE."""

    rle: dict[str, Any]  # {"size": [h, w], "counts": str}
    bbox: tuple[int, int, int, int]
    area: int
    texts: list[TextRef]
    score: float = 1.0  # stability score for SAM masks, 1 for human masks

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["bbox"] = list(self.bbox)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Segment:
        return cls(
            rle=data["rle"],
            bbox=tuple(data["bbox"]),
            area=data["area"],
            texts=[TextRef(**t) for t in data["texts"]],
            score=data.get("score", 1.0),
        )
