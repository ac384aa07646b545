"""Writes of one photo's record that keep its segments: moved to a new path, a
failure noted on it cleared, its damaged rows dropped for ``--repair``; by a
``Store``'s sessions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from .embeddings import EmbeddingFiles
from .lookups import SQL_PARAMETERS
from .records import PROPOSAL, ImageRecord, IndexInfo, SegmentRecord


def add_segments(s: Session, image_id: int, segments: list[dict], **fixed: Any) -> list[int]:
    """Insert one photo's ``segments`` (placed in the embedding files: each has its
    ``vec_chunk``, ``vec_row``) in one executemany, and return their new ids in the
    segments' order. The ORM's unit of work inserts rows that need their generated id
    back one statement each on SQLite (its RETURNING does not keep the parameters'
    order): 100 statements for a photo's 100 segments. The ids are read back ordered
    by embedding row instead: the rows were just appended, in the segments' order,
    after every row that exists."""
    if not segments:
        return []
    seg = SegmentRecord
    chunk, row = segments[0]["vec_chunk"], segments[0]["vec_row"]
    newer = (seg.vec_chunk > chunk) | ((seg.vec_chunk == chunk) & (seg.vec_row >= row))
    query = select(seg.id).where(seg.image_id == image_id, newer).order_by(seg.vec_chunk, seg.vec_row)
    ids = list(s.scalars(query))
    if not ids:  # else a retry (``Store.retrying``) of a commit the server made but never acknowledged
        s.execute(insert(seg), [{**fields, "image_id": image_id, **fixed} for fields in segments])
        ids = list(s.scalars(query))
    if len(ids) != len(segments):  # rows that are not the new ones: never commit a wrong mapping
        raise RuntimeError(f"{len(segments)} segments inserted, {len(ids)} read back for image {image_id}")
    return ids


class ImageWrites:
    """A ``Store``'s writes of one photo's record."""

    sessions: sessionmaker[Session]
    files: Callable[[], EmbeddingFiles]
    retrying: Callable[[Callable[[], Any]], Any]

    def move_image(self, image_id: int, fs_path: bytes, path: str) -> None:
        """A photo renamed or moved: its record (segments, annotations) under its new path."""

        def move() -> None:
            with self.sessions.begin() as s:
                values = {"fs_path": fs_path, "path": path, "file_stat": None}  # read again next time
                s.execute(update(ImageRecord).where(ImageRecord.id == image_id).values(**values))
                s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))

        self.retrying(move)

    def set_file_stats(self, rows: list[dict]) -> None:
        """Files' stats as last read whole with their recorded content (``{"row", "content",
        "stat"}`` each), in one transaction; a row replaced since (other content, or gone)
        is left as it is."""
        match = (ImageRecord.id == bindparam("row")) & (ImageRecord.sha256 == bindparam("content"))

        def note() -> None:
            with self.sessions.begin() as s:
                s.connection().execute(update(ImageRecord).where(match).values(file_stat=bindparam("stat")), rows)

        self.retrying(note)

    def clear_failure(self, image_id: int) -> None:
        def clear() -> None:
            with self.sessions.begin() as s:
                values = {"error_class": None, "error_message": None}
                s.execute(update(ImageRecord).where(ImageRecord.id == image_id).values(**values))

        self.retrying(clear)

    def drop_damaged(self, image_id: int) -> list[int]:
        """``--repair`` of one photo, in one transaction: all its proposals go (the
        walk makes them again: ``proposals_made`` is cleared), and of its annotations
        only those whose own row is damaged (``index --coco`` embeds them again; the
        others stay). Returns the annotation ids dropped."""
        seg = SegmentRecord

        def drop() -> list[int]:
            with self.sessions.begin() as s:
                query = select(seg.id, seg.source, seg.annotation_id, seg.vec_chunk, seg.vec_row)
                rows = s.execute(query.where(seg.image_id == image_id)).all()
                if not rows:
                    return []
                table = np.array([(r.vec_chunk, r.vec_row) for r in rows], np.int64)
                damaged = self.files().damaged(table[:, 0], table[:, 1])
                gone = [r for r, bad in zip(rows, damaged) if r.source == PROPOSAL or bad]
                for start in range(0, len(gone), SQL_PARAMETERS):
                    ids = [r.id for r in gone[start : start + SQL_PARAMETERS]]
                    s.execute(delete(seg).where(seg.id.in_(ids)).execution_options(synchronize_session=False))
                s.execute(update(ImageRecord).where(ImageRecord.id == image_id).values(proposals_made=False))
                s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
                return [r.annotation_id for r in gone if r.source != PROPOSAL]

        result: list[int] = self.retrying(drop)
        return result
