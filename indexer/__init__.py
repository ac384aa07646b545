"""Indexing and search: images -> masks -> segment embeddings -> a store (SQL
metadata, float16 embedding files) and a FAISS index chosen by size; ``web`` serves it.

Imports the core (``usesearch``) and nothing of ``curation`` or ``training``."""

from usesearch.errors import IndexLockedError, IndexMismatchError

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
