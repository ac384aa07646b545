"""FAISS vectors keyed by segment id, kept consistent with the store.

The FAISS file is a cache of the store's embeddings. It is written atomically
(temp file, fsync, rename, fsync the folder) because ``faiss.write_index``
truncates in place. On open it is reconciled with the committed segment ids: ids
the store does not have (written just before a crash) are removed, committed ids
it lacks (committed after its last write) are added from the stored embeddings.
So a query never sees shifted, missing or uncommitted ids.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from .store import Store

DEFAULT_FACTORY = "IDMap2,Flat"  # exact inner product over unit vectors = cosine


def new_index(dim: int, factory: str) -> faiss.Index:
    if not factory.startswith("IDMap2"):
        factory = "IDMap2," + factory
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {str(exc).splitlines()[-1]}") from None


def index_ids(index: faiss.Index) -> np.ndarray:
    return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)


def write_atomic(index: faiss.Index, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _train_if_needed(index: faiss.Index, store: Store) -> None:
    if index.is_trained:
        return
    vectors = [v for _, v in store.embeddings()]
    data = np.concatenate(vectors) if vectors else np.zeros((0, index.d), np.float32)
    try:
        index.train(data)
    except RuntimeError as exc:
        raise ValueError(
            f"FAISS index needs training and {len(data)} vectors are not enough: "
            f"{str(exc).splitlines()[-1]}. Index more images, or use the exact factory '{DEFAULT_FACTORY}'."
        ) from None


def rebuild(store: Store, dim: int, factory: str) -> faiss.Index:
    index = new_index(dim, factory)
    _train_if_needed(index, store)
    for ids, vectors in store.embeddings():
        index.add_with_ids(vectors, ids)
    return index


def reconcile(index: faiss.Index, store: Store) -> tuple[int, int]:
    """Make the index hold exactly the store's committed segments. Returns (removed, added)."""
    have = index_ids(index)
    committed = store.segment_ids()
    extra = np.setdiff1d(have, committed, assume_unique=True)
    missing = np.setdiff1d(committed, have, assume_unique=True)
    if len(extra):
        index.remove_ids(faiss.IDSelectorBatch(extra))
    if len(missing):
        _train_if_needed(index, store)
        for ids, vectors in store.embeddings(missing):
            index.add_with_ids(vectors, ids)
    return len(extra), len(missing)


def load(path: Path, store: Store, dim: int, factory: str) -> tuple[faiss.Index, tuple[int, int]]:
    """The index for a store, from its file when readable, reconciled with the store."""
    index = None
    if path.is_file():
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            index = None  # unreadable cache: rebuild from the store below
    if index is None or index.d != dim:
        index = new_index(dim, factory)
    return index, reconcile(index, store)
