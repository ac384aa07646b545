"""One pixel budget for every decode the server makes: thumbnails, tiles and region
uploads alike.

Memory follows pixels: a photo decodes to 3 bytes a pixel, and a region search also
holds its mask, overlay and PNG (about 10 bytes a pixel in all), so a 118 KB PNG of
98 megapixels costs ~1 GB. Requests wait (in a worker thread) until their pixels
fit; past ``wait_s`` they get a 503 with Retry-After, never an out-of-memory kill.
A photo larger than the whole budget is refused outright (it could never fit).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from usesearch.errors import ServerBusyError, UsesearchError
from usesearch.io.files import DEFAULT_MAX_PIXELS

BUDGET_PIXELS = 2 * DEFAULT_MAX_PIXELS  # ~2 GB of decode and region work at once
WAIT_S = 20.0


class PixelBudget:
    def __init__(self, pixels: int = BUDGET_PIXELS, wait_s: float = WAIT_S):
        self.pixels, self.wait_s = pixels, wait_s
        self.in_use = 0
        self.peak = 0  # the most pixels held at once, for tests and benchmarks
        self._whole_waiting = 0  # holds waiting for the whole budget (``larger_alone``)
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, larger_alone: bool = False) -> Iterator[None]:
        """Hold ``pixels`` of the budget while the body runs (waiting for room). More
        than the whole budget is refused, or with ``larger_alone`` (an indexed photo,
        let in by ``index --max-pixels``: the server must draw what it finds) waits
        for the whole budget and holds it alone."""
        pixels = max(1, int(pixels))
        if larger_alone:
            pixels = min(pixels, self.pixels)
        if pixels > self.pixels:
            raise UsesearchError(f"the photo has {pixels} pixels; this server decodes at most {self.pixels} at a time")
        whole = pixels == self.pixels
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            # While one waits for the whole budget, no one else starts: else a stream of
            # small holds, overlapping, would keep it waiting until its 503.
            self._whole_waiting += whole
            try:
                while self.in_use + pixels > self.pixels or (self._whole_waiting and not whole):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServerBusyError("the server is busy decoding other photos; try again shortly")
                    self._cond.wait(left)
            finally:
                self._whole_waiting -= whole
                if whole:
                    self._cond.notify_all()  # those it held back go on (it holds, or gave up)
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()
