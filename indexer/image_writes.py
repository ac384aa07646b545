"""Writes of photos' records: photos' results saved (several in one transaction:
``save_images``), and the writes that keep a photo's segments: moved to a new path,
a failure noted on it cleared, its damaged rows dropped for ``--repair``; by a
``Store``'s sessions."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from usesearch.errors import failure_words

from .embeddings import EmbeddingFiles
from .lookups import SQL_PARAMETERS
from .records import (
    ANNOTATION,
    DONE,
    FAILED,
    PROPOSAL,
    CopyRecord,
    ImageRecord,
    IndexedFolder,
    IndexInfo,
    SegmentRecord,
)


@dataclass
class PhotoWrite:
    """One file's result for ``save_images``: its segments with their vectors (one
    row each), or the error it failed with."""

    fs_path: bytes
    path: str
    sha256: str | None
    hw: tuple[int, int] | None
    segments: list[dict] = field(default_factory=list)
    vectors: np.ndarray | None = None
    error: BaseException | None = None
    file_stat: str | None = None


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


def annotations_by_split(s: Session, image_id: int) -> Counter[str]:
    """A photo's annotation segments counted by split."""
    seg = SegmentRecord
    query = select(seg.split, func.count()).where(seg.image_id == image_id, seg.source == ANNOTATION)
    return Counter({split or "": n for split, n in s.execute(query.group_by(seg.split))})


def write_photo(s: Session, photo: PhotoWrite, lost: Counter[str] | None = None) -> tuple[list[int], list[int]]:
    """Within a transaction: whatever the file had replaced by this result (its
    segments placed in the embedding files already). Returns (segment ids removed,
    segment ids added); ``lost`` counts, by split, the annotations of a photo whose
    content changed, which go with its old content."""
    old = s.scalar(select(ImageRecord).where(ImageRecord.fs_path == photo.fs_path))
    attempts = 1
    removed: list[int] = []
    error = photo.error
    if old is not None:
        if error is None and old.status == DONE and old.sha256 == photo.sha256:
            old.file_stat = photo.file_stat
            return replace_proposals(s, old, photo.segments)  # its annotations stay
        if error is not None and old.status == DONE:
            old.file_stat = None  # read whole again next time
            # Indexed before, failing now (unreadable for a while, grown past the size limit, a
            # file being replaced): what it had is kept, the failure is noted on it
            # (`failures` lists it) and cleared by the next run that reads it.
            old.error_class, old.error_message = type(error).__name__, failure_words(error)[:2000]
            old.attempts += 1
            return [], []
        attempts = old.attempts + 1
        if lost is not None:
            lost.update(annotations_by_split(s, old.id))
        removed = list(s.scalars(select(SegmentRecord.id).where(SegmentRecord.image_id == old.id)))
        s.execute(delete(SegmentRecord).where(SegmentRecord.image_id == old.id))  # one statement, not one a row
        s.delete(old)
        s.flush()
    record = ImageRecord(
        fs_path=photo.fs_path,
        path=photo.path,
        sha256=photo.sha256,
        height=photo.hw[0] if photo.hw else None,
        width=photo.hw[1] if photo.hw else None,
        status=FAILED if error is not None else DONE,
        error_class=type(error).__name__ if error is not None else None,
        error_message=failure_words(error)[:2000] if error is not None else None,
        attempts=attempts,
        # A failure after the read (content known) keeps the stat too: a re-run skips it
        # unread while the file is as it was (unless --retry-failed).
        file_stat=photo.file_stat if error is None or photo.sha256 is not None else None,
    )
    s.add(record)
    s.flush()
    added = add_segments(s, record.id, photo.segments)
    s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
    return removed, added


def replace_proposals(s: Session, record: ImageRecord, segments: list[dict]) -> tuple[list[int], list[int]]:
    """Within ``write_photo``'s transaction: a photo the index holds with the same
    content gets these proposals in place of its old ones; its annotations stay."""
    seg = SegmentRecord
    mine = (seg.image_id == record.id) & (seg.source == PROPOSAL)
    removed = list(s.scalars(select(seg.id).where(mine)))
    s.execute(delete(seg).where(mine).execution_options(synchronize_session=False))
    record.proposals_made = True
    record.error_class = record.error_message = None  # read whole this time: a failure noted before is over
    record.attempts += 1
    record.updated = dt.datetime.now(dt.timezone.utc)
    s.flush()  # the record's changes before the segments' insert
    added = add_segments(s, record.id, segments)
    s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
    return removed, added


def joined(results: list[tuple[list[int], list[int]]]) -> tuple[list[int], list[int]]:
    """Photos' (removed, added) ids, from ``save_images``, as one write's."""
    return [i for removed, _ in results for i in removed], [i for _, added in results for i in added]


class ImageWrites:
    """A ``Store``'s writes of photos' records."""

    sessions: sessionmaker[Session]
    files: Callable[[], EmbeddingFiles]
    retrying: Callable[[Callable[[], Any]], Any]
    # By split: annotations that went with their photo's old content (`index --coco` embeds them again).
    annotations_lost: Counter[str]

    def save_images(self, photos: list[PhotoWrite]) -> list[tuple[list[int], list[int]]]:
        """Each file's result in place of whatever it had, all in one transaction (a
        kill keeps all of them or none); their vectors are written (and fsynced) to the
        embedding files first, in one append. Per photo: (segment ids removed, segment
        ids added). One transaction for a GPU's group of photos, not one a photo, is
        one commit's round trips and fsyncs (two for the embedding rows, the server's
        for its log) for all of them."""
        with_rows = [p for p in photos if p.segments]
        if with_rows:
            vectors = [p.vectors for p in with_rows if p.vectors is not None]
            if len(vectors) < len(with_rows):
                raise ValueError("segments come with their vectors")
            placed = iter(self.files().place([seg for p in with_rows for seg in p.segments], np.concatenate(vectors)))
            photos = [replace(p, segments=[next(placed) for _ in p.segments]) if p.segments else p for p in photos]

        def write() -> tuple[list[tuple[list[int], list[int]]], Counter[str]]:
            lost: Counter[str] = Counter()  # (a try that fails counts nothing)
            with self.sessions.begin() as s:
                return [write_photo(s, photo, lost) for photo in photos], lost

        result, lost = self.retrying(write)
        self.annotations_lost.update(lost)
        return result

    def note_folders(self, fs_paths: set[bytes]) -> None:
        """Folders an ``index`` run walks (``indexed_folders``)."""
        if not fs_paths:
            return

        def write() -> None:
            with self.sessions.begin() as s:
                for fs_path in fs_paths:
                    s.merge(IndexedFolder(fs_path=fs_path))

        self.retrying(write)

    def move_image(self, image_id: int, fs_path: bytes, path: str, file_stat: str | None = None) -> None:
        """A photo renamed or moved: its record (segments, annotations) under its new path,
        where it was just read whole with its recorded content: a failure noted on it
        under its old path (damaged there, since repaired) is over. ``file_stat``: taken
        before that read (a re-run skips it unread while it holds; None: read again)."""

        def move() -> None:
            with self.sessions.begin() as s:
                values = {"fs_path": fs_path, "path": path, "file_stat": file_stat}
                values.update(error_class=None, error_message=None)
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

    def set_copy_stats(self, rows: list[dict]) -> None:
        """Copies' paths, contents and stats (``{"fs_path", "sha256", "file_stat"}`` each),
        replacing what was noted for those paths, in one transaction."""

        def note() -> None:
            with self.sessions.begin() as s:
                s.execute(delete(CopyRecord).where(CopyRecord.fs_path.in_([r["fs_path"] for r in rows])))
                s.execute(insert(CopyRecord), rows)

        self.retrying(note)

    def forget_copies(self, paths: list[bytes], batch: int = 10_000) -> None:
        """Drop the noted copies at ``paths`` (``leftovers.stale_copies``), a batch per transaction."""
        for lo in range(0, len(paths), batch):
            part = paths[lo : lo + batch]

            def forget() -> None:
                with self.sessions.begin() as s:
                    s.execute(delete(CopyRecord).where(CopyRecord.fs_path.in_(part)))

            self.retrying(forget)

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
