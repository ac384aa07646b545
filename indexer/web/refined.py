"""``/api/search?refine=sam3``: the web app's second stage (``indexer/refine.py``).
SAM 3 loads on the first refined search, not at startup (a server that never refines
never pays for it, nor needs the extra). A refined hit's mask is no stored segment,
so its tile comes inline, as a PNG data URL, and its mask with it."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable

import anyio
from anyio import from_thread

from usesearch.errors import ImageGoneError, ServerBusyError, UsesearchError, first_line
from usesearch.masks import rle
from usesearch.tasks.visualize import segment_tile

from ..filters import SearchFilters
from ..refine import RefinedHit, Refiner
from ..search import SegmentIndex
from . import render
from .schema import HitOut, SearchOut, segment_out

TILE = 192


LISTEN_S = 0.1  # how long each check between SAM 3's batches listens for the client leaving


def client_left(request) -> Callable[[], bool]:
    """``gone()`` for a refined search, called from the route's worker thread: listens
    ``LISTEN_S`` for the client's disconnect. (``Request.is_disconnected`` never sees it
    behind a ``BaseHTTPMiddleware``: its receive is cancelled before the message comes.)"""

    async def left() -> bool:
        with anyio.move_on_after(LISTEN_S):
            return (await request.receive())["type"] == "http.disconnect"
        return False

    return lambda: from_thread.run(left)


REFINED_AT_ONCE = 2  # refined searches running or waiting (SAM 3 takes one at a time); more get a 503


class RefinedSearch:
    def __init__(self, index: SegmentIndex, images: render.ImageCache):
        self.index, self.images = index, images
        self._refiner: Refiner | None = None
        self._lock = threading.Lock()
        # Each waiting request holds one of the server's worker threads, for minutes on a
        # CPU: unbounded, 42 clients gone long ago left no thread for a plain search.
        self._slots = threading.BoundedSemaphore(REFINED_AT_ONCE)

    def refiner(self) -> Refiner:
        with self._lock:
            if self._refiner is None:
                self._refiner = Refiner(self.index, hold=self.images.budget.hold)  # SAM 3's decodes: the same budget
            return self._refiner

    def search(
        self, text: str, k: int, filters: SearchFilters, top: int, gone: Callable[[], bool] | None = None
    ) -> SearchOut:
        """``gone()``: whether the client went away (asked between SAM 3's batches)."""
        start = time.perf_counter()
        if not self._slots.acquire(blocking=False):
            raise ServerBusyError(
                f"{REFINED_AT_ONCE} refined searches are running or waiting (SAM 3 takes one at a time); "
                "try again shortly, or search without refine"
            )
        try:
            hits, report = self.refiner().search(text, k, filters, top=top, gone=gone)
        finally:
            self._slots.release()
        out, skipped = [], list(report.skipped)
        for hit in hits:
            try:
                out.append(HitOut(**self._fields(hit)))
            except UsesearchError as exc:  # gone or changed since SAM 3 read it, or no tile within the
                # pixel budget: that hit skipped, as SAM 3 skips a photo, not the whole answer
                said = f"{hit.image}: {first_line(exc)}"
                if said not in skipped:
                    skipped.append(said)
        return SearchOut(
            query=text,
            took_ms=1000 * (time.perf_counter() - start),
            segments_indexed=int(self.index.index.ntotal),
            refined_photos=report.refined,  # (not those skipped)
            image_steps=report.image_steps,
            skipped=skipped,
            hits=out,
        )

    def _fields(self, hit: RefinedHit) -> dict:
        """A hit's fields, its tile and mask inline: a SAM 3 instance is no stored segment,
        so ``/api/segments/ID/...`` would show the best-overlapping one's (or 404 for 0)."""
        fields = segment_out(
            hit,
            True,
            rank=hit.rank,
            score=hit.score,
            use_score=hit.use_score,
            overlap=hit.overlap,
            photo_rank=hit.photo_rank,
            refined_by="sam3",
        )
        record = self.index.store.image(hit.image_id)
        if record is None:
            raise ImageGoneError("no longer in the index")
        mask = rle.decode(hit.mask)
        picture = segment_tile(self.images.rgb(record), mask, hit.bbox, TILE)
        fields["tile_url"] = _data_url(render.png(picture))
        fields["mask_url"] = _data_url(render.mask_png(mask))
        return fields


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
