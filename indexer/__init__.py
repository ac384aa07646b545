"""Indexing and search: images -> SAM masks -> segment embeddings -> SQLite + FAISS."""

from .pipeline import IndexLockedError, IndexMismatchError, IndexOptions, IndexReport, index_paths
from .search import Hit, SegmentIndex, reindex

__all__ = ["Hit", "IndexLockedError", "IndexMismatchError", "IndexOptions", "IndexReport", "SegmentIndex", "index_paths", "reindex"]
