"""float16 rows scored against a query: through torch where a model run loaded it
(it converts float16 several times faster than NumPy), else NumPy's (a command that
runs no model imports no torch: 2 s and 600 MB)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import numpy as np


def product_in_use() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """float32 products of float16 rows with a float32 query, by torch where it is loaded."""
    return _torch_product if sys.modules.get("torch") is not None else _numpy_product  # (None: blocked)


def _torch_product(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (torch_tensor(rows).float() @ torch_tensor(q)).numpy()


def _numpy_product(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    return rows.astype(np.float32) @ q


def torch_tensor(array: np.ndarray):
    """A torch view of rows that are only read (a read-only map's slice included:
    torch warns that it cannot protect them from writes, and none happen)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def top_rows(
    matrix: np.ndarray, query: np.ndarray, fetch: int, max_norm: float, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, exact float32 scores) of a superset of the ``fetch`` best rows of a
    float16 ``matrix`` (rows of norm at most ``max_norm``) for ``query``, among the
    rows ``keep`` allows (all when None).

    A float16 product (torch accumulates it in float32) reads the rows once, at half
    the bytes a float32 conversion moves; only rows within twice its error bound of
    the fetch-th best are then scored exactly. Its error is at most 2^-10 |x| |q| (the
    query and the result are each rounded once to float16); the bound used is twice
    that. Every row whose exact score reaches the fetch-th best is in the superset."""
    q = np.ascontiguousarray(query, np.float32)
    approx = (torch_tensor(matrix) @ torch_tensor(q).half()).float().numpy()
    if keep is not None:
        approx[~keep] = -np.inf
    fetch = min(fetch, int(np.isfinite(approx).sum()))
    if fetch <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    error = 2.0**-9 * max_norm * float(np.linalg.norm(q))
    kth = np.partition(approx, len(approx) - fetch)[len(approx) - fetch]
    positions = np.flatnonzero(approx >= kth - 2 * error)
    return positions, matrix[positions].astype(np.float32) @ q
