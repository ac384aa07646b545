"""The search web app and its JSON API, over one warm ``SegmentIndex``.

Files are only ever opened through ids: a segment id or image id is looked up in
the store and the store's path is read. No route takes a path from the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from usesearch.errors import NotFoundError
from usesearch.io.files import DEFAULT_MAX_PIXELS, decode, pixel_count
from usesearch.masks import region as region_lib

from ..filters import SearchFilters, effort_notes, why_none
from ..hits import Hit
from ..records import DONE, ImageRecord, SegmentRow
from ..search import MAX_QUERY_CHARS, SegmentIndex
from . import apidoc, render
from .audit import add_audit_routes
from .budget import PixelBudget
from .error_handlers import add_error_handlers
from .refined import RefinedSearch, client_left
from .schema import (
    MAX_K,
    Filters,
    HitOut,
    ImageId,
    ImageOut,
    KParam,
    PictureSize,
    Refine,
    RefineTop,
    RegionOut,
    RegionSearchOut,
    SearchOut,
    SegmentId,
    SegmentOut,
    WithMasks,
    segment_out,
)
from .security import HostCheckMiddleware, SameOriginMiddleware, TokenMiddleware
from .transport import MAX_BODY_BYTES, Transport

MAX_UPLOAD_BYTES = 20 * 2**20  # a photo uploaded for a region search (20 MiB: /api/region-search's doc says so)
REGION_SEARCH = "/api/region-search"

STATIC = resources.files(__package__) / "static"
# Segment ids are never reused (AUTOINCREMENT) and a changed image file is refused,
# so a segment's pictures never change: let the browser keep them.
SEGMENT_PICTURE_HEADERS = {"Cache-Control": "private, max-age=86400"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


async def _photo_body(request: Request) -> bytes:
    """The uploaded photo: the request body (its size capped by ``Transport``)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValueError("send the photo's file as the raw request body (curl --data-binary @PHOTO), not as a form")
    data = await request.body()
    if not data:
        raise ValueError("send the photo's file as the request body")
    return data


def _body_limit(path: str) -> int:
    return MAX_UPLOAD_BYTES if path == REGION_SEARCH else MAX_BODY_BYTES


def create_app(index: SegmentIndex, token: str | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app over an opened index. The text side of the model loads here, so that the
    first query is as quick as the rest and a model/index mismatch stops startup; the
    image side (a search by a region) loads with the first such search.

    ``allowed_hosts`` limits the Host header; ``serve`` sets it to the loopback names
    on a loopback bind, so a web page cannot reach the server by DNS rebinding."""
    model = index.text_model
    budget = PixelBudget()  # every decode's, region uploads included
    images = render.ImageCache(budget=budget)
    refined = RefinedSearch(index, images)  # SAM 3 loads on the first refined search
    app = FastAPI(
        title="usesearch",
        summary="Open-vocabulary segment search over one index.",
        description=f"Index model: {model.fingerprint}. Pictures are PNG/JPEG; ids come from search results.",
        version="1",
        # Swagger UI and ReDoc load scripts from a CDN into this origin; /api renders
        # the same schema with nothing from outside.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(SameOriginMiddleware)
    if token is not None:
        app.add_middleware(TokenMiddleware, token=token)
    if allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, hosts=allowed_hosts)
    app.add_middleware(Transport, limit_for=_body_limit)  # outermost: HEAD is GET to the others

    # -- errors (web/error_handlers.py): a bad request is a 4xx with a message, never a 500 --
    add_error_handlers(app)

    # -- lookups -------------------------------------------------------------------------
    def segment_row(segment_id: int) -> SegmentRow:
        row = index.store.rows([segment_id]).get(segment_id)
        if row is None:
            raise NotFoundError(f"no segment with id {segment_id}")
        return row

    def image_record(image_id: int) -> ImageRecord:
        record = index.store.image(image_id)
        if record is None or record.status != DONE:
            raise NotFoundError(f"no indexed image with id {image_id}")
        return record

    def searched(
        run: Callable[[], list[Hit]],
        with_masks: bool,
        filters: SearchFilters,
        best=None,
        kind: str = "text",
        **echo: Any,
    ) -> SearchOut:
        start = time.perf_counter()
        hits = run()  # searches run side by side: SegmentIndex locks only what it must
        total = int(index.index.ntotal)
        took_ms = 1000 * (time.perf_counter() - start)
        return SearchOut(
            took_ms=took_ms,
            segments_indexed=total,
            **echo,
            # Why none, where a filter names what the index lacks (an empty list said nothing; the CLI said why),
            # and an effort asked for that changes nothing, or a calibration short of its target (the CLI's too).
            # (``kind``: by a segment or a region, "image": its recall is measured apart)
            notes=(([] if hits else why_none(index.store, filters, best)) + effort_notes(index, filters, kind=kind))
            or None,
            hits=[HitOut(**segment_out(h, with_masks, rank=h.rank, score=h.score)) for h in hits],
        )

    # -- JSON API ------------------------------------------------------------------------
    @app.get("/api/search", response_model=SearchOut, tags=["search"])
    def search_text(
        request: Request,
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")],
        filters: Filters,
        k: KParam = 24,
        with_masks: WithMasks = False,
        refine: Refine = None,
        refine_top: RefineTop = 20,
    ) -> SearchOut:
        """Segments ranked by similarity to a text (prompt-template ensemble, cached per text); with
        ``refine=sam3``, SAM 3's instances of the text in the top ``refine_top`` photos (masks included)."""
        if refine:
            # Asked between SAM 3's batches: a client gone stops minutes of work at the next one.
            return refined.search(q, k, filters, refine_top, gone=client_left(request))
        best = lambda f: index.query(q, 1, f)  # noqa: E731
        return searched(lambda: index.query(q, k, filters), with_masks, filters, best, query=q)

    @app.get("/api/segments/{segment_id}/similar", response_model=SearchOut, tags=["search"])
    def search_like(
        segment_id: SegmentId, filters: Filters, k: KParam = 24, with_masks: WithMasks = False
    ) -> SearchOut:
        """More like this: segments most similar to a given one, itself excluded."""
        best = lambda f: index.similar(segment_id, 1, f)  # noqa: E731
        return searched(
            lambda: index.similar(segment_id, k, filters), with_masks, filters, best, "image", like_segment=segment_id
        )

    @app.post(
        REGION_SEARCH,
        response_model=RegionSearchOut,
        tags=["search"],
        openapi_extra={  # the photo is read from the raw body, which FastAPI cannot describe by itself
            "requestBody": {
                "required": True,
                "description": "The photo's file, as is (not a form): JPEG, PNG, WebP, ...",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def search_region(
        request: Request,
        filters: Filters,
        point: Annotated[
            str | None, Query(max_length=64, description="X,Y in the photo's pixels: SAM picks the region there.")
        ] = None,
        box: Annotated[
            str | None, Query(max_length=128, description="X,Y,W,H in the photo's pixels: SAM picks the region in it.")
        ] = None,
        k: KParam = 24,
        with_masks: WithMasks = False,
    ) -> RegionSearchOut:
        """Segments most like a region of any photo: the request body is the photo's
        file (at most 20 MiB; decoded with the indexer's safeguards and
        kept in memory only), the region a point or a box that prompts SAM."""
        if (point is None) == (box is None):
            raise ValueError(
                "give exactly one of the query parameters point=X,Y and box=X,Y,W,H (the photo is the body)"
            )
        data = await _photo_body(request)
        return await run_in_threadpool(_region_search, data, point, box, k, filters, with_masks)

    def _region_search(
        data: bytes, point: str | None, box: str | None, k: int, filters: SearchFilters, with_masks: bool
    ) -> RegionSearchOut:
        """Decode, region, search and overlay, all under the photo's share of the pixel budget."""
        with budget.hold(pixel_count(data, "in the upload", DEFAULT_MAX_PIXELS)):
            rgb = decode(data, "in the upload", DEFAULT_MAX_PIXELS)
            picked = index.region(
                rgb, region_lib.parse_point(point) if point else None, region_lib.parse_box(box) if box else None
            )
            result = searched(lambda: index.search_region(rgb, picked, k, filters), with_masks, filters, kind="image")
            region = RegionOut(
                bbox=list(picked.bbox),
                area=picked.area,
                stability_score=picked.stability_score,
                mask=picked.rle,
                overlay=render.region_overlay_data_url(rgb, picked.mask),
            )
            return RegionSearchOut(**result.model_dump(), region=region)

    @app.get("/api/segments/{segment_id}", response_model=SegmentOut, tags=["segments"])
    def segment(segment_id: SegmentId) -> SegmentOut:
        """One segment's metadata, with its COCO RLE mask."""
        return SegmentOut(**segment_out(segment_row(segment_id), True))

    @app.get(
        "/api/segments/{segment_id}/mask.png",
        tags=["segments"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "Full-resolution mask, 255 inside."}},
    )
    def segment_mask(segment_id: SegmentId) -> Response:
        """The segment's mask at the image's full resolution (8-bit PNG: 255 inside, 0 outside)."""
        return Response(
            render.mask_png(render.row_mask(segment_row(segment_id))),
            media_type="image/png",
            headers=SEGMENT_PICTURE_HEADERS,
        )

    @app.get(
        "/api/segments/{segment_id}/tile.png",
        tags=["segments"],
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "A crop around the segment, mask tinted and outlined."}
        },
    )
    def segment_tile(
        segment_id: SegmentId, size: Annotated[int, Query(ge=32, le=512, description="Long side in pixels.")] = 192
    ) -> Response:
        """A square crop around the segment with its mask tinted and outlined (410 if the image left the disk)."""
        row = segment_row(segment_id)
        return Response(
            render.tile(images.rgb(image_record(row.image_id)), row, size),
            media_type="image/png",
            headers=SEGMENT_PICTURE_HEADERS,
        )

    @app.get(
        "/api/segments/{segment_id}/overlay.png",
        tags=["segments"],
        response_class=Response,
        responses={
            200: {
                "content": {"image/png": {}},
                "description": "Transparent layer matching the image thumbnail of the same size.",
            }
        },
    )
    def segment_overlay(segment_id: SegmentId, size: PictureSize = 1024) -> Response:
        """A transparent RGBA layer showing the mask, the size of the image's thumbnail with the same ``size``."""
        return Response(
            render.overlay(segment_row(segment_id), size), media_type="image/png", headers=SEGMENT_PICTURE_HEADERS
        )

    @app.get("/api/images/{image_id}", response_model=ImageOut, tags=["images"])
    def image(image_id: ImageId) -> ImageOut:
        """An indexed image and its segments, largest first."""
        record = image_record(image_id)
        if record.width is None or record.height is None:  # recorded with every done image
            raise NotFoundError(f"no indexed image with id {image_id}")
        ids = index.store.image_segment_ids(image_id)  # largest first
        rows = index.store.rows(ids)
        return ImageOut(
            image_id=record.id,
            image=record.path,
            width=record.width,
            height=record.height,
            thumbnail_url=f"/api/images/{record.id}/thumbnail.jpg",
            segments=[SegmentOut(**segment_out(rows[i], False)) for i in ids if i in rows],
        )

    @app.get(
        "/api/images/{image_id}/thumbnail.jpg",
        tags=["images"],
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "The image, long side at most `size`."}},
    )
    def image_thumbnail(image_id: ImageId, size: PictureSize = 1024) -> Response:
        """The image as JPEG, long side at most ``size`` (never enlarged; 410 if it left the disk)."""
        return Response(render.thumbnail(images.rgb(image_record(image_id)), size), media_type="image/jpeg")

    @app.get("/api/info", tags=["index"])
    def info() -> dict[str, Any]:
        """What the index holds and which model answers."""
        index.refresh()
        stats = index.stats()
        return {**stats, "limits": {"max_query_chars": MAX_QUERY_CHARS, "max_k": MAX_K}}

    # -- the page --------------------------------------------------------------------------
    def static(name: str, media_type: str) -> Response:
        return Response((STATIC / name).read_bytes(), media_type=media_type, headers=PAGE_HEADERS)

    @app.get("/api", include_in_schema=False)
    def api_reference() -> Response:
        return HTMLResponse(
            apidoc.render(app.openapi()),
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return static("index.html", "text/html; charset=utf-8")

    @app.get("/app.js", include_in_schema=False)
    def script() -> Response:
        return static("app.js", "text/javascript; charset=utf-8")

    @app.get("/style.css", include_in_schema=False)
    def style() -> Response:
        return static("style.css", "text/css; charset=utf-8")

    # -- the audit view (web/audit.py): the lists of the last `usesearch audit`, and verdicts --
    add_audit_routes(app, index)

    @app.get("/audit", include_in_schema=False)
    def audit_page() -> Response:
        return static("audit.html", "text/html; charset=utf-8")

    @app.get("/audit.js", include_in_schema=False)
    def audit_script() -> Response:
        return static("audit.js", "text/javascript; charset=utf-8")

    @app.get("/audit.css", include_in_schema=False)
    def audit_style() -> Response:
        return static("audit.css", "text/css; charset=utf-8")

    # FastAPI's schema, with the errors the server sends (apidoc.described): made here, once,
    # not on the first request (two first requests, /api's thread and /openapi.json's, raced).
    app.openapi_schema = apidoc.described(app.openapi(), token is not None)
    return app
