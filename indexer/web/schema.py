"""The JSON API's shapes: the query parameters its routes take (with their limits,
which the OpenAPI schema and ``/api`` show) and the models its answers are made of."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel

from usesearch.errors import BadArgumentError

from ..filters import CANDIDATES_MAX, MAX_MIN_AREA, SearchFilters
from ..hits import Hit
from ..records import SegmentRow

MAX_K = 200
MAX_GLOB_CHARS = 512
MAX_ID = 2**63 - 1  # SQLite's integer range: larger ids are a 422, not an overflow
MAX_ECHO_CHARS = 200  # of a bad input, quoted back in a 422

SegmentId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A segment id from a search result.")]
ImageId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="An image id from a segment or search result.")]
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="Number of hits.")]
PathGlob = Annotated[
    str | None,
    Query(max_length=MAX_GLOB_CHARS, description="Only images whose indexed path matches this glob, e.g. '*/2024/*'."),
]
MinArea = Annotated[int, Query(ge=0, le=MAX_MIN_AREA, description="Only segments of at least this many pixels.")]
PerImage = Annotated[bool, Query(description="Keep only the best segment of each image.")]
WithMasks = Annotated[bool, Query(description="Include each hit's COCO RLE mask.")]
MinScore = Annotated[
    float | None,
    Query(ge=-1.0, le=1.0, allow_inf_nan=False, description="Only hits scoring at least this (cosine)."),
]
Distinct = Annotated[
    bool, Query(description="Drop a hit that mostly lies inside (or mostly contains) a better hit of the same image.")
]
PictureSize = Annotated[int, Query(ge=32, le=2048, description="Long side in pixels.")]
Refine = Annotated[
    str | None,
    Query(pattern="^sam3$", description="'sam3': SAM 3 segments the query's phrase in the top photos (second stage)."),
]
Label = Annotated[
    str | None, Query(min_length=1, max_length=256, description="Only annotation segments of this class.")
]
Split = Annotated[
    str | None, Query(min_length=1, max_length=128, description="Only annotation segments of this split.")
]
Source = Annotated[
    str | None,
    Query(pattern="^(annotation|proposal)$", description="Only a labelled dataset's annotations, or only proposals."),
]
NProbe = Annotated[
    int | None,
    Query(ge=1, le=1 << 16, description="A compressed index's clusters visited (default: its calibrated number)."),
]
Rerank = Annotated[
    int | None,
    Query(ge=1, le=CANDIDATES_MAX, description="A compressed index's candidates re-scored exactly (default: its own)."),
]
RefineTop = Annotated[int, Query(ge=1, le=200, description="With refine: photos of the search SAM 3 looks at.")]


def search_filters(
    request: Request,
    path: PathGlob = None,
    min_area: MinArea = 0,
    per_image: PerImage = False,
    min_score: MinScore = None,
    distinct: Distinct = False,
    label: Label = None,
    split: Split = None,
    source: Source = None,
    nprobe: NProbe = None,
    rerank: Rerank = None,
) -> SearchFilters:
    """The filters of every search route, from its query parameters (a FastAPI
    dependency): one list of them, and one ``SearchFilters`` check of their ranges
    (its ValueError is a 400, like every bad value)."""
    try:  # Starlette decodes bytes that are not UTF-8 as U+FFFD: `q=%FF%FE` searched for "\ufffd\ufffd"
        unquote_to_bytes(request.scope.get("query_string", b"").decode("latin-1")).decode("utf-8")
    except UnicodeDecodeError:
        raise BadArgumentError("the query string is not UTF-8: percent-encode its text as UTF-8") from None
    return SearchFilters(
        per_image=per_image,
        path=path,
        min_area=min_area,
        min_score=min_score,
        distinct=distinct,
        label=label,
        split=split,
        source=source,
        nprobe=nprobe,
        rerank=rerank,
    )


Filters = Annotated[SearchFilters, Depends(search_filters)]


class SegmentOut(BaseModel):
    segment_id: int
    image_id: int
    image: str
    bbox: list[int]
    area: int
    predicted_iou: float | None = None
    stability_score: float | None = None
    mask: dict[str, Any] | None = None
    tile_url: str
    mask_url: str
    image_url: str
    # A labelled dataset's annotation (index --coco): its id, class, split and crowd flag.
    source: str | None = None
    annotation_id: int | None = None
    category: str | None = None
    split: str | None = None
    iscrowd: bool | None = None  # (the CLI's --json gave it, the web's hits did not)


class HitOut(SegmentOut):
    rank: int
    score: float
    # A SAM 3 instance (?refine=sam3): score is SAM 3's; use_score and segment_id are the
    # best-overlapping stored segment's (segment_id 0: none), overlap their masks' IoU;
    # photo_rank the photo's rank in the USE search; tile_url is a data URL.
    use_score: float | None = None
    overlap: float | None = None
    photo_rank: int | None = None
    refined_by: str | None = None


class SearchOut(BaseModel):
    query: str | None = None
    like_segment: int | None = None
    took_ms: float
    segments_indexed: int
    refined_photos: int | None = None  # ?refine=sam3: photos SAM 3 looked at
    image_steps: int | None = None  # of them, photos whose image step ran (not cached)
    skipped: list[str] | None = None  # of them, photos that could not be read, each with its reason
    notes: list[str] | None = None  # no hit: why a filter found none; any: an effort that changed nothing
    hits: list[HitOut]


class RegionOut(BaseModel):
    bbox: list[int]
    area: int
    stability_score: float | None = None
    mask: dict[str, Any]  # COCO RLE of the region in the uploaded photo
    overlay: str  # the photo with the region drawn, as a PNG data URL


class RegionSearchOut(SearchOut):
    region: RegionOut


class ImageOut(BaseModel):
    image_id: int
    image: str
    width: int
    height: int
    thumbnail_url: str
    segments: list[SegmentOut]


def segment_out(row: SegmentRow | Hit, with_mask: bool, **extra: Any) -> dict[str, Any]:
    """A segment's (or a hit's) fields for ``SegmentOut``, with the URLs of its pictures."""
    if isinstance(row, Hit):
        sid, image, mask = row.segment_id, row.image, row.mask
    else:
        sid, image, mask = row.id, row.image_path, {"size": list(row.image_hw), "counts": row.rle_counts}
    labels = {"source": row.source, "annotation_id": row.annotation_id, "category": row.category, "split": row.split}
    labels["iscrowd"] = row.iscrowd
    return dict(
        segment_id=sid,
        image_id=row.image_id,
        image=image,
        bbox=list(row.bbox),
        area=row.area,
        predicted_iou=row.predicted_iou,
        stability_score=row.stability_score,
        mask=mask if with_mask else None,
        tile_url=f"/api/segments/{sid}/tile.png",
        mask_url=f"/api/segments/{sid}/mask.png",
        image_url=f"/api/images/{row.image_id}",
        **labels,
        **extra,
    )


# -- a 422's errors as the client is shown them ---------------------------------------------
def _shorten(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = _encodable(value if isinstance(value, str) else repr(value))
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + f"... ({len(text)} characters)"


def _encodable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (JSON's "\\ud800") escaped, not
    left to fail the error response's own encoding."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_error(error: dict) -> dict:
    """One of FastAPI's validation errors as the client is shown it: its input shortened,
    and the two a malformed body gives in words of the request it was (FastAPI says
    "body.1: JSON decode error" with an input of {}, or echoes a body sent without a
    JSON content type as b'...')."""
    loc, kind, value = list(error.get("loc", ())), error.get("type"), error.get("input")
    msg = str(error.get("msg", ""))
    if kind == "json_invalid":
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        loc, value = ["body"], None
        msg = f"not valid JSON{at}: {(error.get('ctx') or {}).get('error', msg)}"
    elif loc == ["body"] and isinstance(value, bytes):
        msg, value = "send a JSON object with Content-Type: application/json", value.decode("utf-8", "replace")
    loc = [_encodable(p) if isinstance(p, str) else p for p in loc]  # a key of the body is echoed too
    return {"loc": loc, "msg": _encodable(msg[:MAX_ECHO_CHARS]), "type": kind, "input": _shorten(value)}
