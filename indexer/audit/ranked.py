"""The best items of one audit list seen so far, in bounded memory: batches are pushed
as columns, and only the ``keep`` highest scores stay (ties broken by key, so the
result does not depend on how the items were batched: a resumed audit ends with the
same list as an uninterrupted one)."""

from __future__ import annotations

import numpy as np


class Ranked:
    """Columns of equal length; ``score`` (float, NaN: not a candidate) and ``key``
    (int64, unique per item) are required, the rest ride along."""

    def __init__(self, keep: int, columns: dict[str, np.ndarray] | None = None, found: int = 0):
        self.keep = keep
        self.columns: dict[str, np.ndarray] = dict(columns or {})
        self.found = found  # candidates pushed (finite scores), kept or not: what the list found

    def __len__(self) -> int:
        return len(self.columns.get("score", ()))

    def push(self, **batch: np.ndarray) -> None:
        score = np.asarray(batch["score"], np.float64)
        wanted = np.isfinite(score)
        self.found += int(wanted.sum())
        if not wanted.any():
            return
        batch = {name: np.asarray(values)[wanted] for name, values in batch.items()}
        if self.columns:
            if set(batch) != set(self.columns):
                raise ValueError(f"columns {sorted(batch)} differ from {sorted(self.columns)}")
            batch = {name: np.concatenate([self.columns[name], batch[name]]) for name in self.columns}
        order = np.lexsort((batch["key"], -np.asarray(batch["score"], np.float64)))[: self.keep]
        self.columns = {name: values[order] for name, values in batch.items()}

    def rows(self) -> list[dict]:
        """Best first, as plain Python values."""
        names = list(self.columns)
        return [dict(zip(names, values)) for values in zip(*(self.columns[n].tolist() for n in names))]

    def top(self, n: int) -> Ranked:
        """The best ``n`` (the columns are kept best first)."""
        return Ranked(n, {name: values[:n] for name, values in self.columns.items()}, self.found)

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """The columns under ``prefix.NAME``, for a checkpoint file."""
        return {f"{prefix}.{name}": values for name, values in self.columns.items()}

    @classmethod
    def from_state(cls, keep: int, prefix: str, arrays, found: int | None = None) -> Ranked:
        """``found``: as saved (None: a checkpoint from before it was counted, the items held)."""
        start = f"{prefix}."
        columns = {name[len(start) :]: np.asarray(arrays[name]) for name in arrays if name.startswith(start)}
        return cls(keep, columns, len(columns.get("score", ())) if found is None else found)
