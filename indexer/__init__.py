"""Indexing and search: images -> masks -> segment embeddings -> a store (SQL
metadata, float16 embedding files) and a FAISS index chosen by size; ``web`` serves it.

Imports the core (``usesearch``) and nothing of ``curation`` or ``training``."""

from usesearch.errors import IndexLockedError, IndexMismatchError

from .pipeline import IndexOptions, IndexReport, index_paths
from .search import Hit, SegmentIndex, reindex

__all__ = [
    "Hit",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexOptions",
    "IndexReport",
    "SegmentIndex",
    "index_paths",
    "reindex",
]
