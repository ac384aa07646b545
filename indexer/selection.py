"""Which segments a filtered search looks among. A path glob keeping a small share of
the images, or a ``min_area`` keeping few segments, is resolved in the database into
an id selection (FAISS searches within it, or its rows are scored exactly); broader
filters are left to be checked on the candidates. A class, split or source (a
labelled dataset's ``--label``, ``--split``) is always resolved, through its index:
no candidate carries them. A resolved filter, and the store statistics that decide,
are kept until the next commit: a user searching one folder again and again pays for
resolving it once."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

from .store import Store

PUSHDOWN_SHARE = 0.2  # a path glob keeping at most this share of the images becomes a FAISS id selection
AREA_PUSHDOWN_MAX = 200_000  # a --min-area keeping at most about this many segments becomes one too
CACHE_ENTRIES = 32  # resolved filters and store statistics kept per index

T = TypeVar("T")
Selection = tuple[np.ndarray | None, set[int] | None]


class Selections:
    """One index's resolved filters and store statistics (each recomputed when a
    commit has changed the store), and the rows of its most recent selection."""

    def __init__(self, store: Store, ntotal: Callable[[], int]):
        self.store = store
        self._ntotal = ntotal  # segments the index holds now
        self._cache: dict[Hashable, tuple[int, Any]] = {}
        self._held_rows: tuple[np.ndarray, np.ndarray, float] | None = None

    def resolve(
        self,
        path: str | None,
        min_area: int,
        label: str | None = None,
        split: str | None = None,
        source: str | None = None,
    ) -> Selection:
        """(the segments to search within, as [n, 3] (id, chunk, row), or None; image
        ids to check candidates against, or None). Empty means nothing can match."""
        if not path and not min_area and label is None and split is None and source is None:
            return None, None
        return self.cached(
            ("selection", path, min_area, label, split, source),
            lambda: self._resolve(path, min_area, label, split, source),
        )

    def _resolve(
        self, path: str | None, min_area: int, label: str | None, split: str | None, source: str | None
    ) -> Selection:
        images = None
        labelled = label is not None or split is not None or source is not None
        if path:
            images = self.store.image_ids_matching(path)
            if not images:
                return None, set()
            if len(images) <= PUSHDOWN_SHARE * self.cached("done_images", self.store.done_image_count):
                if labelled:
                    return self.store.segment_locations_labelled(label, split, source, min_area, images), None
                return self.store.segment_locations_of_images(images, min_area), None
        if labelled:  # the path, where broad, is checked on the candidates
            return self.store.segment_locations_labelled(label, split, source, min_area), images
        if min_area and images is None:
            sample = self.cached("area_sample", self.store.sample_areas)
            if len(sample) and np.mean(sample >= min_area) * self._ntotal() <= AREA_PUSHDOWN_MAX:
                return self.store.segment_locations_with_area(min_area), None
        return None, images

    def cached(self, name: Hashable, compute: Callable[[], T]) -> T:
        """A statistic of the store (or a resolved filter), recomputed when a commit
        has changed the store; the oldest go past ``CACHE_ENTRIES``."""
        generation = self.store.generation()
        held = self._cache.get(name)
        if held is None or held[0] != generation:
            held = self._cache[name] = (generation, compute())
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
