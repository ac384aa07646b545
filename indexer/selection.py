"""Which segments a filtered search looks among. A path glob keeping a small share of
the images, or a ``min_area``, class, split or source keeping few segments, is
resolved in the database into an id selection (FAISS searches within it, or its rows
are scored exactly); broader filters are left to be checked on the candidates, whose
rows carry the image, area, class, split and source. How many segments a filter keeps
is estimated from a random sample of the catalog's rows. A resolved filter, and the
store statistics that decide, are kept until the next commit: a user searching one
folder again and again pays for resolving it once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar

import numpy as np

from .filters import SearchFilters
from .store import Store

PUSHDOWN_SHARE = 0.2  # a path glob keeping at most this share of the images becomes a FAISS id selection
SELECTION_MAX = (
    200_000  # a --min-area, --label, --split or --source keeping at most about this many segments becomes one too
)
CACHE_ENTRIES = 32  # resolved filters and store statistics kept per index

T = TypeVar("T")
Labels = tuple[str | None, str | None, str | None]  # class, split, source (None: any)


class Selection(NamedTuple):
    """What a search looks among. ``allowed``: the segments to search within, as [n, 3]
    (id, chunk, row), or None (all). Checked on the candidates: ``images`` (image ids,
    or None), ``labels`` (class, split, source; or None) and ``min_area`` (0: settled).
    ``kept``: the estimated share of candidates those checks keep (to fetch enough at
    once). Empty means nothing can match."""

    allowed: np.ndarray | None = None
    images: set[int] | None = None
    labels: Labels | None = None
    min_area: int = 0
    kept: float = 1.0

    @property
    def empty(self) -> bool:
        return self.images == set() or (self.allowed is not None and not len(self.allowed))


class Selections:
    """One index's resolved filters and store statistics (each recomputed when a
    commit has changed the store), and the rows of its most recent selection."""

    def __init__(self, store: Store, ntotal: Callable[[], int]):
        self.store = store
        self._ntotal = ntotal  # segments the index holds now
        self._cache: dict[Hashable, tuple[int, Any]] = {}
        self._cache_lock = threading.Lock()  # a server's threads evict together (each popped the same key)
        self._held_rows: tuple[np.ndarray, np.ndarray, float] | None = None

    def resolve(self, filters: SearchFilters) -> Selection:
        """The selection for these filters' path, min_area, label, split and source."""
        f = filters
        if not f.path and not f.min_area and f.label is None and f.split is None and f.source is None:
            return Selection()
        key = ("selection", f.path, f.min_area, f.label, f.split, f.source)
        return self.cached(key, lambda: self._resolve(f.path, f.min_area, (f.label, f.split, f.source)))

    def _resolve(self, path: str | None, min_area: int, labels: Labels) -> Selection:
        images, image_share = None, 1.0
        labelled = labels != (None, None, None)
        if path:
            images = self.store.image_ids_matching(path)
            if not images:
                return Selection(images=set())
            image_share = len(images) / max(1, self.cached("done_images", self.store.done_image_count))
            if image_share <= PUSHDOWN_SHARE:
                return Selection(self.store.segment_locations_where(images, min_area, *labels))
        # The path, where broad, is checked on the candidates (its share of the images
        # standing for its share of the segments).
        if labelled and self._few(0, labels):
            return Selection(self.store.segment_locations_where(None, min_area, *labels), images, kept=image_share)
        checked = labels if labelled else None
        if min_area and images is None and self._few(min_area):
            allowed = self.store.segment_locations_where(None, min_area)
            return Selection(allowed, None, checked, 0, self._kept(0, checked))
        return Selection(None, images, checked, min_area, image_share * self._kept(min_area, checked))

    def _few(self, min_area: int, labels: Labels = (None, None, None)) -> bool:
        """Whether a filter keeps at most about ``SELECTION_MAX`` segments (or none of
        the sample: rare, or absent)."""
        sample = self.cached("sample", self.store.sample_segments)
        share = sample.share(min_area, *labels)
        return not len(sample) or share == 0 or share * self._ntotal() <= SELECTION_MAX

    def _kept(self, min_area: int, labels: Labels | None) -> float:
        if not min_area and labels is None:
            return 1.0
        return self.cached("sample", self.store.sample_segments).share(min_area, *(labels or (None, None, None)))

    def cached(self, name: Hashable, compute: Callable[[], T]) -> T:
        """A statistic of the store (or a resolved filter), recomputed when a commit
        has changed the store; the oldest go past ``CACHE_ENTRIES``."""
        generation = self.store.generation()
        held = self._cache.get(name)
        if held is None or held[0] != generation:
            held = (generation, compute())  # (computed outside the lock: searches do not wait on each other)
            with self._cache_lock:
                self._cache[name] = held
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.pop(next(iter(self._cache)))
        value: T = held[1]
        return value

    def rows(self, allowed: np.ndarray) -> tuple[np.ndarray, float]:
        """The float16 rows of a selection and their largest norm, kept for the most
        recent selection only (at most ``search.SCAN_UP_TO`` rows: 230 MB at 768-d), so
        searching one folder again and again reads its rows once. ``allowed`` arrays
        are themselves cached per filter until a commit, so identity says it is the same."""
        held = self._held_rows
        if held is None or held[0] is not allowed:
            import torch

            # Unverified: checksumming up to SCAN_UP_TO rows would cost more than the scan.
            # Rebuilds, re-scoring and `similar` verify what they read, and `index
            # --repair` finds every damaged row.
            matrix = self.store.files().read(allowed[:, 1], allowed[:, 2], np.float16, verify=False)
            max_norm = (
                float(torch.linalg.vector_norm(torch.from_numpy(matrix), dim=1, dtype=torch.float32).max())
                if len(matrix)
                else 0.0
            )
            held = self._held_rows = (allowed, matrix, max_norm)
        return held[1], held[2]
