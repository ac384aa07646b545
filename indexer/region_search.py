"""A query by a region of any photo (``SegmentIndex.region``, ``similar_region``,
``search_region``): SAM's most stable mask for a point or a box, or a mask given,
embedded with the index's own model and searched as any vector. ``SegmentIndex``'s,
kept apart from its text and vector searches (``search.py``)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from usesearch.errors import BadArgumentError
from usesearch.io.images import to_rgb_array

if TYPE_CHECKING:
    from usesearch.masks import region as region_lib
    from usesearch.models.model import SegmentEmbedder

    from .filters import SearchFilters
    from .hits import Hit
    from .index_models import IndexModels


class RegionSearch:
    """``SegmentIndex``'s search by a region (a mixin: the index gives its models, their
    lock and ``search_vector``)."""

    models: IndexModels
    _model_lock: threading.Lock

    if TYPE_CHECKING:

        @property
        def model(self) -> SegmentEmbedder: ...

        def search_vector(self, vector: np.ndarray, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]: ...

    def region(
        self,
        image,
        point: tuple[float, float] | None = None,
        box: tuple[float, float, float, float] | None = None,
        mask: np.ndarray | str | os.PathLike | None = None,
    ) -> region_lib.Region:
        """The region of ``image`` (any photo: its path, an RGB array or PIL) a query by region
        searches for: ``mask`` as given (an array [H, W], or a mask picture's path), or SAM's
        most stable mask for ``point`` (x, y) or ``box`` (x, y, w, h), with the SAM of the
        index's preset."""
        from usesearch.masks import region as region_lib

        rgb = to_rgb_array(image)
        if mask is not None:
            if point is not None or box is not None:  # (a BadArgumentError, as its siblings' refusals)
                raise BadArgumentError("give a mask, or a point or box for SAM, not both")
            return region_lib.from_mask(mask, rgb.shape[:2])
        with self._model_lock:
            return region_lib.prompt(self.models.sam(), rgb, point=point, box=box)

    def similar_region(
        self, image, point=None, box=None, mask=None, k: int = 10, filters: SearchFilters | None = None
    ) -> list[Hit]:
        """Segments most like a region of any photo (need not be indexed): see ``region``."""
        rgb = to_rgb_array(image)
        return self.search_region(rgb, self.region(rgb, point=point, box=box, mask=mask), k, filters)

    def search_region(
        self, image, picked: region_lib.Region, k: int = 10, filters: SearchFilters | None = None
    ) -> list[Hit]:
        """Segments most like a region already picked (``region``) of ``image``,
        embedded with the index's own model."""
        rgb = to_rgb_array(image)
        with self._model_lock:
            vector = self.model.embed_segments(rgb, picked.mask[None])[0]
        return self.search_vector(vector, k, filters)
