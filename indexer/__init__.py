"""Indexing and search: images -> masks -> segment embeddings -> a store (SQL
metadata, float16 embedding files) and a FAISS index chosen by size; ``web`` serves it.

Imports the core (``usesearch``) and nothing of ``curation`` or ``training``.

The public names load lazily (PEP 562), as ``usesearch``'s do: a module that needs only
the catalog (``info``, ``failures``, a Ray task decoding photos) does not pay for
importing torch, open_clip and faiss (~4 s and ~800 MB a process on 2 cores).
"""

from importlib import import_module
from typing import TYPE_CHECKING

from usesearch.errors import IndexLockedError, IndexMismatchError

_LAZY = {
    "Hit": ".hits",
    "IndexOptions": ".options",
    "IndexReport": ".options",
    "SearchFilters": ".filters",
    "SegmentIndex": ".search",
    "index_paths": ".pipeline",
    "recalibrate": ".maintenance",
    "reindex": ".maintenance",
}

if TYPE_CHECKING:  # what the type checker sees: the names, eagerly
    from .filters import SearchFilters
    from .hits import Hit
    from .maintenance import recalibrate, reindex
    from .options import IndexOptions, IndexReport
    from .pipeline import index_paths
    from .search import SegmentIndex

__all__ = [
    "Hit",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexOptions",
    "IndexReport",
    "SearchFilters",
    "SegmentIndex",
    "index_paths",
    "recalibrate",
    "reindex",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
