"""The store's reads that searches make: which images and segments a filter keeps,
where the embedding rows of segments lie, and the rows that hits are made of. A
part of ``Store`` (its base class), kept apart from its writes."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from .records import DONE, FAILED, ImageRecord, IndexedFolder, SegmentFacts, SegmentRecord, SegmentRow

SQL_PARAMETERS = 900  # ids per IN list: SQLite's bound-parameter limit


@dataclass(frozen=True)
class SegmentSample:
    """Columns of segments picked at random (``SearchLookups.sample_segments``)."""

    area: np.ndarray  # int64
    source: np.ndarray  # object (str)
    split: np.ndarray  # object (str or None)
    category: np.ndarray  # object (str or None)

    @classmethod
    def of(cls, rows: list[tuple]) -> SegmentSample:
        columns = list(zip(*rows)) if rows else [(), (), (), ()]
        return cls(np.array(columns[0], np.int64), *(np.array(c, object) for c in columns[1:]))

    def __len__(self) -> int:
        return len(self.area)

    def share(
        self, min_area: int = 0, label: str | None = None, split: str | None = None, source: str | None = None
    ) -> float:
        """The share of the sample with at least ``min_area`` pixels, of this class,
        split and source (None: any); 0 for an empty sample."""
        keep = self.area >= min_area
        for column, value in ((self.category, label), (self.split, split), (self.source, source)):
            if value is not None:
                keep &= column == value
        return float(keep.mean()) if len(keep) else 0.0


class SearchLookups:
    """Read-only queries over the catalog, by a ``Store``'s engine and sessions."""

    engine: Engine
    sessions: sessionmaker[Session]

    def failed_image_ids(self) -> set[int]:
        """The images whose files failed to index (never indexed: no segment)."""
        with self.sessions() as s:
            return set(s.scalars(select(ImageRecord.id).where(ImageRecord.status == FAILED)))

    def kept_failure_ids(self) -> set[int]:
        """The images indexed before whose file failed at its last read: their segments are
        kept with the failure noted (``image_writes.write_photo``), until a read succeeds or
        ``prune`` removes them."""
        with self.sessions() as s:
            kept = (ImageRecord.status == DONE) & ImageRecord.error_class.is_not(None)
            return set(s.scalars(select(ImageRecord.id).where(kept)))

    def segments_now(self) -> tuple[int, int]:
        """(the highest committed segment id, how many are committed), from one statement:
        one snapshot, where two queries would let a commit land between them. Each part
        keeps its database's shortcut (the rowid's last entry; SQLite's count of a b-tree):
        50 ms at 10M segments, where a count of an id range took 0.9 s."""
        seg = SegmentRecord
        both = select(
            select(func.max(seg.id)).scalar_subquery(), select(func.count()).select_from(seg).scalar_subquery()
        )
        with self.sessions() as s:
            high, count = s.execute(both).one()
        return int(high or 0), int(count or 0)

    def image_ids_matching(self, path: str) -> set[int]:
        """Ids of the done images whose path matches the glob (``path_glob``). The
        glob's literal prefix is looked up in the path index, so a glob under one
        folder reads that folder's rows, not every image's; a glob with no prefix
        (``2024/*`` is ``*/2024/*``) has its longest literal part found by the
        database, so Python matches only the paths that hold it (202,000 photos:
        0.9-2.0 s -> 0.1 s)."""
        path = path_glob(path)
        prefix = path[: min((path.find(c) for c in "*?[" if c in path), default=len(path))]
        query = select(ImageRecord.id, ImageRecord.path).where(ImageRecord.status == DONE)
        if prefix:
            query = query.where(_starts_with(ImageRecord.path, prefix, self.engine.dialect.name))
        elif part := _longest_literal(path):  # LIKE may ignore case: a superset, matched exactly below
            query = query.where(ImageRecord.path.contains(part, autoescape=True))
        with self.sessions() as s:
            rows = s.execute(query).all()
        return {i for i, p in rows if fnmatch.fnmatchcase(p, path)}

    def indexed_folders(self) -> list[bytes]:
        """The folders ``index`` runs walked (none in an index made before they were noted)."""
        if IndexedFolder.__tablename__ not in inspect(self.engine).get_table_names():
            return []
        with self.sessions() as s:
            return list(s.scalars(select(IndexedFolder.fs_path)))

    def done_image_count(self) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(ImageRecord).where(ImageRecord.status == DONE)) or 0

    def sample_segments(self, size: int = 10_000, seed: int = 0) -> SegmentSample:
        """Area, source, split and class of about ``size`` segments picked at random
        (by id, through the primary key): enough to estimate the share a filter keeps."""
        seg = SegmentRecord
        with self.sessions() as s:
            low, high = s.execute(select(func.min(seg.id), func.max(seg.id))).one()
            if low is None:
                return SegmentSample.of([])
            ids = np.unique(np.random.default_rng(seed).integers(low, high + 1, size)).tolist()
            rows = [
                tuple(row)
                for i in range(0, len(ids), SQL_PARAMETERS)
                for row in s.execute(
                    select(seg.area, seg.source, seg.split, seg.category).where(seg.id.in_(ids[i : i + SQL_PARAMETERS]))
                )
            ]
        return SegmentSample.of(rows)

    def segment_locations_where(
        self,
        images: Iterable[int] | None = None,
        min_area: int = 0,
        label: str | None = None,
        split: str | None = None,
        source: str | None = None,
    ) -> np.ndarray:
        """[n, 3] (id, chunk, row) of the segments of these images (None: any), of at
        least ``min_area`` pixels, of this class, split and source (None: any): a
        search's selection, found through the image, area, category, split and source
        indexes, with where each embedding lies."""
        seg = SegmentRecord
        query = select(seg.id, seg.vec_chunk, seg.vec_row)
        for column, value in ((seg.category, label), (seg.split, split), (seg.source, source)):
            if value is not None:
                query = query.where(column == value)
        if min_area:
            query = query.where(seg.area >= min_area)
        if images is None:
            return self._locations([query])
        wanted = sorted(images)
        return self._locations(
            [
                query.where(seg.image_id.in_(wanted[i : i + SQL_PARAMETERS]))
                for i in range(0, len(wanted), SQL_PARAMETERS)
            ]
        )

    def segment_locations(self, ids: Iterable[int]) -> np.ndarray:
        """[n, 3] (id, chunk, row) of these segments (the committed ones), in no set
        order. SQLite takes every id as one JSON parameter through its own driver: a
        compressed index's 1,000 re-scored candidates cost 2.4 ms here, not 4.9 ms in
        900-id IN lists through SQLAlchemy (``scale.py``'s 200k index)."""
        seg, wanted = SegmentRecord, [int(i) for i in ids]
        found = self._sqlite_rows("id, vec_chunk, vec_row", wanted)
        if found is not None:
            return np.array(found, np.int64).reshape(-1, 3)
        return self._locations(
            [
                select(seg.id, seg.vec_chunk, seg.vec_row).where(seg.id.in_(wanted[i : i + SQL_PARAMETERS]))
                for i in range(0, len(wanted), SQL_PARAMETERS)
            ]
        )

    def _sqlite_rows(self, columns: str, wanted: list[int]) -> Sequence[Any] | None:
        """The segments' ``columns`` (SQL) as plain tuples, every id as one JSON parameter
        through SQLite's own driver; None on another database, with no ids, or where this
        SQLite lacks ``json_each`` (then SQLAlchemy's IN lists serve)."""
        if self.engine.dialect.name != "sqlite" or not wanted:
            return None
        try:
            with self.engine.connect() as conn:
                cursor = conn.connection.cursor()
                cursor.execute(
                    f"SELECT {columns} FROM segments WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(wanted),),
                )
                return cursor.fetchall()
        except sqlite3.OperationalError as exc:
            if "json_each" not in str(exc):
                raise
            return None

    def _locations(self, queries) -> np.ndarray:
        with self.engine.connect() as conn:  # plain rows: no ORM objects for thousands of ids
            values = [v for q in queries for row in conn.execute(q) for v in tuple(row)]
        return np.fromiter(values, np.int64, len(values)).reshape(-1, 3)

    def rows(self, ids: Iterable[int]) -> dict[int, SegmentRow]:
        wanted = [int(i) for i in ids]
        out: dict[int, SegmentRow] = {}
        with self.sessions() as s:
            for start in range(0, len(wanted), SQL_PARAMETERS):
                seg = SegmentRecord
                q = (
                    select(
                        seg.id,
                        seg.image_id,
                        ImageRecord.path,
                        ImageRecord.fs_path,
                        ImageRecord.height,
                        ImageRecord.width,
                        seg.x,
                        seg.y,
                        seg.w,
                        seg.h,
                        seg.area,
                        seg.rle_counts,
                        seg.predicted_iou,
                        seg.stability_score,
                        seg.source,
                        seg.annotation_id,
                        seg.category,
                        seg.iscrowd,
                        seg.split,
                    )
                    .join(ImageRecord)
                    .where(seg.id.in_(wanted[start : start + SQL_PARAMETERS]))
                )
                for r in s.execute(q):
                    out[r.id] = SegmentRow(
                        r.id,
                        r.image_id,
                        r.path,
                        r.fs_path,
                        (r.height, r.width),
                        (r.x, r.y, r.w, r.h),
                        r.area,
                        r.rle_counts,
                        r.predicted_iou,
                        r.stability_score,
                        r.source,
                        r.annotation_id,
                        r.category,
                        r.iscrowd,
                        r.split,
                    )
        return out

    def segment_facts(self, ids: Iterable[int]) -> dict[int, SegmentFacts]:
        """Segment id -> its photo, area and labels (``SegmentFacts``): what a search checks
        its candidates against, read for tens of thousands at a time (``rows`` of 32,768
        synthetic segments took 0.47 s, these 0.09 s; real RLEs make rows dearer still)."""
        wanted = [int(i) for i in ids]
        found = self._sqlite_rows("id, image_id, area, source, category, split", wanted)
        if found is None:
            seg, in_lists = SegmentRecord, list[Any]()
            with self.engine.connect() as conn:  # plain rows: no ORM objects
                for start in range(0, len(wanted), SQL_PARAMETERS):
                    chosen = seg.id.in_(wanted[start : start + SQL_PARAMETERS])
                    columns = (seg.id, seg.image_id, seg.area, seg.source, seg.category, seg.split)
                    in_lists += conn.execute(select(*columns).where(chosen)).all()
            found = in_lists
        return {row[0]: SegmentFacts(*row[1:]) for row in found}

    def placements(self, ids: Iterable[int]) -> dict[int, tuple[int, tuple[float, float, float, float]]]:
        """Segment id -> (image id, box x, y, w, h as fractions of the photo's width and
        height): what the audit's leak pairs need of each segment, without its RLE and
        path (``rows`` read 1.3 KB a segment, and pairs reach millions)."""
        wanted = [int(i) for i in ids]
        out: dict[int, tuple[int, tuple[float, float, float, float]]] = {}
        seg = SegmentRecord
        with self.sessions() as s:
            for start in range(0, len(wanted), SQL_PARAMETERS):
                q = (
                    select(seg.id, seg.image_id, seg.x, seg.y, seg.w, seg.h, ImageRecord.height, ImageRecord.width)
                    .join(ImageRecord)
                    .where(seg.id.in_(wanted[start : start + SQL_PARAMETERS]))
                )
                for i, image_id, x, y, w, h, height, width in s.execute(q):
                    height, width = height or 1, width or 1  # (a segment's photo has its size)
                    out[i] = (image_id, (x / width, y / height, w / width, h / height))
        return out


def path_glob(glob: str) -> str:
    """The glob a ``--path`` means against the stored absolute paths: an absolute one
    (or one starting with ``*``) as it is; a relative one matches the end of a path from
    any folder on, as the paths the query table shows under their common folder read:
    ``2024/*`` is ``*/2024/*``."""
    return glob if glob.startswith(("/", "*")) or os.path.isabs(glob) else "*/" + glob


def _longest_literal(glob: str) -> str:
    """The longest run of a glob that matches only itself (outside ``*``, ``?`` and
    ``[...]``): a part every matching path holds. Two characters at least, else ''."""
    parts = re.split(r"\*|\?|\[!?\]?[^\]]*\]|\[", glob)
    part = max(parts, key=len, default="")
    return part if len(part) >= 2 else ""


def _starts_with(column, prefix: str, dialect: str):
    """``column`` starts with ``prefix``, in a form the path index can answer. SQLite
    compares text bytewise (BINARY collation), so a range does it; elsewhere (a
    PostgreSQL locale collation orders differently) an escaped LIKE."""
    if dialect == "sqlite":
        return (column >= prefix) & (column < prefix + "\U0010ffff")
    return column.startswith(prefix, autoescape=True)
