"""Giving back the disk of removed segments' embedding rows.

The embedding files are append-only (a reader never sees a row change under it), so
the rows of removed segments (pruned photos, photos indexed again after a change,
the torn tail of a killed run) stay where they are. ``compact`` copies the live rows
of every closed chunk that is at least ``DEAD_SHARE`` dead to the end of the files,
points their segments at the copies, batch by batch in committed transactions, and
deletes a chunk file only once no committed segment refers to it. A kill at any
moment leaves each segment pointing at a complete row (the old or the copy); the
copies a kill left unreferenced are dead rows a later run reclaims, and a chunk left
unreferenced is deleted by it.

Segment ids do not change, so the FAISS index is untouched. Searches running in
other processes see the move as a commit (the store's generation), which drops
their cached locations; a chunk they have mapped stays readable until they unmap it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select, update

from .records import IndexInfo, SegmentRecord
from .store import Store

DEAD_SHARE = 0.25  # rewrite a chunk once this share of its rows is dead
MOVE_BATCH = 65_536  # rows read, appended and committed at a time (~200 MB at 768-d)


@dataclass
class CompactReport:
    chunks_removed: int = 0
    rows_moved: int = 0
    bytes_freed: int = 0


def live_rows(store: Store) -> dict[int, int]:
    """Committed segments per chunk."""
    with store.sessions() as s:
        return dict(s.execute(select(SegmentRecord.vec_chunk, func.count()).group_by(SegmentRecord.vec_chunk)).all())


def dead_bytes(store: Store) -> int:
    """Bytes of the embedding files that no committed segment refers to."""
    files = store.files()
    return files.bytes_on_disk() - sum(live_rows(store).values()) * files.row_bytes


def compact(store: Store, dead_share: float = DEAD_SHARE) -> CompactReport:
    """Rewrite the chunks that are at least ``dead_share`` dead (the newest, still
    being appended to, is left alone) and delete those no segment refers to. Call it
    holding the index's writer lock (``pipeline.Writer``)."""
    files, report = store.files(), CompactReport()
    chunks = files.chunks()
    live = live_rows(store)
    closed = chunks[:-1]  # appends go to the last chunk: never move rows out of it
    to_move = [c for c in closed if 0 < live.get(c, 0) and 1 - live[c] / max(1, files.rows_in(c)) >= dead_share]
    if to_move:
        with store.sessions() as s:
            moving = np.array(
                s.execute(
                    select(SegmentRecord.id, SegmentRecord.vec_chunk, SegmentRecord.vec_row)
                    .where(SegmentRecord.vec_chunk.in_(to_move))
                    .order_by(SegmentRecord.vec_chunk, SegmentRecord.vec_row)
                ).all(),
                np.int64,
            ).reshape(-1, 3)
        for lo in range(0, len(moving), MOVE_BATCH):
            part = moving[lo : lo + MOVE_BATCH]
            new_chunks, new_rows = files.append(
                files.read(part[:, 1], part[:, 2], np.float16, ids=part[:, 0])
            )  # the same bits
            _point_at(store, part[:, 0], new_chunks, new_rows)
            report.rows_moved += len(part)
    live = live_rows(store)
    for chunk in closed:
        if not live.get(chunk):
            report.bytes_freed += files.remove(chunk)
            report.chunks_removed += 1
    return report


def _point_at(store: Store, ids: np.ndarray, chunks: np.ndarray, rows: np.ndarray) -> None:
    def write():
        with store.sessions.begin() as s:
            s.execute(
                update(SegmentRecord),
                [{"id": int(i), "vec_chunk": int(c), "vec_row": int(r)} for i, c, r in zip(ids, chunks, rows)],
            )
            s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))

    store.retrying(write)
