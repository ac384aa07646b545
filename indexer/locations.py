"""Where each segment's embedding lies, held in memory: segment id -> (chunk, row).

A compressed index re-scores its candidates exactly from the float16 embedding
files, so every search must first learn where 1,000-10,000 candidates lie. Asking
the catalog costs ~2.4 ms per 1,000 ids on a warm 200k SQLite index and about
10 us an id at 10M; this map answers from two arrays indexed by id (6 bytes per id
up to the largest: uint16 chunk + uint32 row), in microseconds.

Why it can be kept without a change log:
- ids are never reused (SQLite AUTOINCREMENT, PostgreSQL sequences), and a row, once
  written, is never overwritten (``EmbeddingFiles.append`` only appends; compaction
  copies to the end). So an entry, once true, keeps pointing at that segment's bits
  until its chunk file is deleted;
- commits add rows above the largest id seen (``sync`` fetches only those);
- compaction re-points segments and then deletes their old chunk: ``sync`` sees a
  chunk it knew gone and rebuilds the whole map;
- a deleted segment's entry is left alone: FAISS no longer returns its id.
Any id the map does not hold (a PostgreSQL transaction that committed a lower id
after a higher one, or a commit between a sync and the search) is looked up in the
catalog, so a stale map costs speed, never a wrong row.
"""

from __future__ import annotations

import threading

import numpy as np
from sqlalchemy import select

from .records import SegmentRecord
from .store import Store

NO_CHUNK = np.iinfo(np.uint16).max  # an id the map holds no row for
BATCH = 262_144  # rows fetched at a time: bounded memory while a 10M map builds


class LocationMap:
    """segment id -> (chunk, row), kept in step with the catalog by ``sync``. Safe to
    share between threads: lookups read one consistent pair of arrays; syncs are
    serialised."""

    def __init__(self, store: Store):
        self.store = store
        self._chunk = np.full(0, NO_CHUNK, np.uint16)
        self._row = np.zeros(0, np.uint32)
        self._largest = 0  # every committed id up to this was fetched (or is unknown to the map)
        self._known_chunks: frozenset[int] = frozenset()
        self._generation: int | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._generation is not None

    @property
    def nbytes(self) -> int:
        return self._chunk.nbytes + self._row.nbytes

    def sync(self, generation: int | None = None) -> None:
        """Bring the map up to the catalog's committed state; a no-op at the
        generation it holds (``generation``: the store's, where the caller just read
        it). The first call builds it: ~1 s per million segments."""
        if generation is not None and generation == self._generation:
            return
        with self._lock:
            generation = self.store.generation()  # read first: a commit landing meanwhile is caught next time
            if generation == self._generation:
                return
            chunks = frozenset(self.store.files().chunks())
            if not self._known_chunks <= chunks:  # compaction deleted a chunk: entries may point at it
                self._chunk, self._row, self._largest = np.full(0, NO_CHUNK, np.uint16), np.zeros(0, np.uint32), 0
            chunk, row = self._chunk, self._row
            for ids, at_chunk, at_row in self._rows_above(self._largest):
                if ids[-1] >= len(chunk):  # grow by half again, so appends cost amortised O(1)
                    size = max(int(ids[-1]) + 1, len(chunk) + len(chunk) // 2)
                    chunk = np.concatenate([chunk, np.full(size - len(chunk), NO_CHUNK, np.uint16)])
                    row = np.concatenate([row, np.zeros(size - len(row), np.uint32)])
                row[ids] = at_row  # the row first: a lookup meanwhile trusts an entry once its chunk is set
                chunk[ids] = at_chunk
                self._largest = int(ids[-1])
            # One assignment: a lookup running meanwhile sees the old pair or the new one.
            self._chunk, self._row = chunk, row
            self._known_chunks = chunks
            self._generation = generation

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """[n, 3] (id, chunk, row) of these segments; ids the map does not hold come
        from the catalog."""
        ids = np.asarray(ids, np.int64)
        chunk, row = self._chunk, self._row
        inside = (ids >= 0) & (ids < len(chunk))
        at_chunk = np.full(len(ids), NO_CHUNK, np.int64)
        at_chunk[inside] = chunk[ids[inside]]
        held = at_chunk != NO_CHUNK
        found = np.empty((int(held.sum()), 3), np.int64)
        found[:, 0], found[:, 1], found[:, 2] = ids[held], at_chunk[held], row[ids[held]]
        if held.all():
            return found
        return np.concatenate([found, self.store.segment_locations(ids[~held])])

    def _rows_above(self, largest: int):
        """(ids, chunks, rows) of the committed segments with id > ``largest``, in id
        order, ``BATCH`` at a time, through the primary key."""
        seg = SegmentRecord
        after = largest
        while True:
            q = select(seg.id, seg.vec_chunk, seg.vec_row).where(seg.id > after).order_by(seg.id).limit(BATCH)
            with self.store.engine.connect() as conn:
                values = [v for r in conn.execute(q) for v in tuple(r)]
            if not values:
                return
            block = np.fromiter(values, np.int64, len(values)).reshape(-1, 3)
            yield block[:, 0], block[:, 1].astype(np.uint16), block[:, 2].astype(np.uint32)
            after = int(block[-1, 0])
            if len(block) < BATCH:
                return
