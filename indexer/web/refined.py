"""``/api/search?refine=sam3``: the web app's second stage (``indexer/refine.py``).
SAM 3 loads on the first refined search, not at startup (a server that never refines
never pays for it, nor needs the extra). A refined hit's mask is no stored segment,
so its tile comes inline, as a PNG data URL, and its mask with it."""

from __future__ import annotations

import base64
import threading
import time

from usesearch.masks import rle
from usesearch.tasks.visualize import segment_tile

from ..filters import SearchFilters
from ..refine import RefinedHit, Refiner
from ..search import SegmentIndex
from . import render
from .schema import HitOut, SearchOut, segment_out

TILE = 192


class RefinedSearch:
    def __init__(self, index: SegmentIndex, images: render.ImageCache):
        self.index, self.images = index, images
        self._refiner: Refiner | None = None
        self._lock = threading.Lock()

    def refiner(self) -> Refiner:
        with self._lock:
            if self._refiner is None:
                self._refiner = Refiner(self.index)
            return self._refiner

    def search(self, text: str, k: int, filters: SearchFilters, top: int) -> SearchOut:
        start = time.perf_counter()
        hits, report = self.refiner().search(text, k, filters, top=top)
        return SearchOut(
            query=text,
            took_ms=1000 * (time.perf_counter() - start),
            segments_indexed=int(self.index.index.ntotal),
            refined_photos=report.photos,
            image_steps=report.image_steps,
            skipped=report.skipped,
            hits=[HitOut(**self._fields(hit)) for hit in hits],
        )

    def _fields(self, hit: RefinedHit) -> dict:
        fields = segment_out(hit, True, rank=hit.rank, score=hit.score, use_score=hit.use_score, refined_by="sam3")
        record = self.index.store.image(hit.image_id)
        if record is not None:
            picture = segment_tile(self.images.rgb(record), rle.decode(hit.mask), hit.bbox, TILE)
            fields["tile_url"] = "data:image/png;base64," + base64.b64encode(render.png(picture)).decode()
        return fields
