"""Segment metadata and embeddings in SQL (SQLite by default) through SQLAlchemy 2.0.

The database is the source of truth: one transaction per image records its segments
and where their embeddings lie in the append-only float16 files beside it
(``embeddings.py``), so the FAISS file can always be rebuilt from the two.

An image is keyed by the exact bytes of its path (``fs_path``), so a file whose
name is not UTF-8 can be opened again and never collides with another; ``path``
is its display form. Readers open the store read-only: they never create tables,
and an index on a read-only medium is opened immutable.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, event, func, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from usesearch.errors import CatalogUnavailableError, UsesearchError, first_line

from . import identity, migrations
from .embeddings import FOLDER as EMBEDDINGS_FOLDER
from .embeddings import EmbeddingFiles
from .records import DONE, FAILED, Base, ImageRecord, IndexInfo, SegmentRecord, SegmentRow, VectorShard, VectorState

RETRY_SECONDS = 60.0  # how long a write waits for an unreachable database server


def server_url(url: str) -> str:
    """``postgresql://`` means the psycopg (3) driver, the one usesearch installs."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets queries read committed data while the indexer writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_read_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _immutable_url(url: str) -> str:
    """SQLite URL that opens the file read-only and immutable: no -wal/-shm side
    files, which a read-only folder or medium cannot hold."""
    database = make_url(url).database
    return f"sqlite:///file:{database}?mode=ro&immutable=1&uri=true"


log = logging.getLogger(__name__)


class Store:
    """``read_only=True`` is for readers (query, info, serve): it never creates or
    alters tables, and falls back to an immutable open where SQLite cannot write its
    side files (a read-only folder or mount)."""

    def __init__(self, url: str, read_only: bool = False, folder: str | os.PathLike | None = None):
        self.url = url
        self.read_only = read_only
        database = make_url(url).database if url.startswith("sqlite") else None
        if folder is None and not database:
            raise ValueError("a store on a database server needs the folder for its embedding files")
        # Embedding files live in the index folder (beside segments.sqlite).
        self.folder = Path(folder) if folder is not None else Path(database).parent
        self.engine = (
            create_engine(url) if url.startswith("sqlite") else create_engine(server_url(url), pool_pre_ping=True)
        )  # a restarted server's dead connections are replaced, not used
        try:
            self._open(url, read_only)
        except OperationalError as exc:
            if self.engine.dialect.name == "sqlite":
                raise
            raise CatalogUnavailableError(
                f"cannot reach the catalog database at "
                f"{make_url(url).render_as_string(hide_password=True)}: {first_line(exc.orig or exc)}"
            ) from None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._files: EmbeddingFiles | None = None
        self._catalog_lock = None
        if read_only:
            try:
                identity.check(self, assign=False)
            except BaseException:
                self.engine.dispose()
                raise

    def claim(self) -> None:
        """For the one writer (under the folder's lock): lock the catalog, then check
        (and give a new or older index) the id that pairs it with this folder."""
        self._catalog_lock = identity.lock_catalog(self)
        try:
            identity.check(self, assign=True)
        except BaseException:
            self.close()
            raise

    def _open(self, url: str, read_only: bool) -> None:
        sqlite = self.engine.dialect.name == "sqlite"
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_read_pragmas if read_only else _sqlite_pragmas)
        if read_only:
            try:
                tables = set(inspect(self.engine).get_table_names())
            except OperationalError:
                if not sqlite:
                    raise
                self.engine.dispose()
                self.engine = create_engine(_immutable_url(url))
                tables = set(inspect(self.engine).get_table_names())
            self._has_vector_state = "vector_state" in tables  # made by a writable open since
            if "index_info" not in tables:
                raise UsesearchError(
                    f"{make_url(url).database or url} is not a usesearch index (it has no index_info table)"
                )
            missing = migrations.missing_columns(self.engine)
            if missing:
                raise UsesearchError(
                    f"this index needs an upgrade ({', '.join(missing[:3])} missing): run `usesearch info` on it once "
                    "where it is writable, or `usesearch index` again"
                )
        else:
            migrations.upgrade(self.engine, self.folder)
            Base.metadata.create_all(self.engine)
            self._has_vector_state = True

    def close(self) -> None:
        lock, self._catalog_lock = self._catalog_lock, None
        try:
            identity.unlock_catalog(lock)
        except Exception:  # noqa: BLE001 - a dead server connection released it already
            pass
        self.engine.dispose()

    # -- identity ----------------------------------------------------------------
    def info(self) -> IndexInfo | None:
        with self.sessions() as s:
            return s.scalar(select(IndexInfo))

    def set_info(self, info: IndexInfo) -> None:
        with self.sessions.begin() as s:
            s.add(info)

    def generation(self) -> int:
        with self.sessions() as s:
            return s.scalar(select(IndexInfo.generation)) or 0

    def set_factory(self, factory: str, mode: str | None = None) -> None:
        with self.sessions.begin() as s:
            info = s.scalar(select(IndexInfo))
            info.factory = factory
            if mode is not None:
                info.index_mode = mode

    def vectors_checksum(self, shard: int = 0) -> str | None:
        with self.sessions() as s:
            if shard == 0:
                return s.scalar(select(IndexInfo.vectors_sha256))
            return s.scalar(select(VectorShard.sha256).where(VectorShard.shard == shard))

    def set_vectors_checksum(self, sha256: str, shard: int = 0) -> None:
        with self.sessions.begin() as s:
            if shard == 0:
                s.execute(update(IndexInfo).values(vectors_sha256=sha256))
            else:
                s.merge(VectorShard(shard=shard, sha256=sha256))

    def vectors_generation(self) -> int | None:
        if not self._has_vector_state:
            return None
        with self.sessions() as s:
            return s.scalar(select(VectorState.generation))

    def set_vectors_generation(self, generation: int | None) -> None:
        with self.sessions.begin() as s:
            s.merge(VectorState(id=1, generation=generation))

    def set_shard_size(self, shard_size: int) -> None:
        with self.sessions.begin() as s:
            s.execute(update(IndexInfo).values(shard_size=shard_size))

    # -- images ------------------------------------------------------------------
    def image_by_path(self, fs_path: bytes) -> ImageRecord | None:
        return self.retrying(lambda: self._one(select(ImageRecord).where(ImageRecord.fs_path == fs_path)))

    def done_with_hash(self, sha256: str) -> ImageRecord | None:
        return self.retrying(
            lambda: self._one(
                select(ImageRecord).where(ImageRecord.sha256 == sha256, ImageRecord.status == DONE).limit(1)
            )
        )

    def _one(self, query):
        with self.sessions() as s:
            return s.scalar(query)

    def save_image(
        self,
        fs_path: bytes,
        path: str,
        sha256: str | None,
        hw: tuple[int, int] | None,
        segments: Iterable[dict[str, Any]] = (),
        vectors: np.ndarray | None = None,
        error: BaseException | None = None,
    ) -> tuple[list[int], list[int]]:
        """Replace whatever the file had by this result, in one transaction; the
        segments' ``vectors`` are written (and fsynced) to the embedding files first.
        Returns (segment ids removed, segment ids added)."""
        segments = list(segments)
        if segments:
            chunks, rows = self.files().append(vectors)
            segments = [{**seg, "vec_chunk": int(c), "vec_row": int(r)} for seg, c, r in zip(segments, chunks, rows)]
        return self.retrying(lambda: self._save_image(fs_path, path, sha256, hw, segments, error))

    def retrying(self, write):
        """A write transaction, tried again while a database server is unreachable
        (restarting, failing over): each try commits all or nothing, so a retry never
        leaves half an image; past ``RETRY_SECONDS`` a one-line error."""
        waited, pause = 0.0, 0.5
        while True:
            try:
                self._keep_catalog_lock()
                return write()
            except OperationalError as exc:
                if self.engine.dialect.name == "sqlite" or waited >= RETRY_SECONDS:
                    if self.engine.dialect.name == "sqlite":
                        raise
                    raise CatalogUnavailableError(
                        f"the catalog database at {make_url(self.url).render_as_string(hide_password=True)} is unreachable "
                        f"({first_line(exc.orig or exc)}); finished images are kept, "
                        "run again to resume"
                    ) from None
                log.warning("catalog database unreachable, retrying in %.1f s", pause)
                time.sleep(pause)
                waited += pause
                pause = min(pause * 2, 8.0)

    def _keep_catalog_lock(self) -> None:
        """A writer's PostgreSQL lock lives as long as its session: a server restart
        ends both, and the pool reconnects the writes quietly. Each write first checks
        the lock's session (one round trip) and takes the lock again where it is gone,
        refused in one line if another writer took it meanwhile."""
        if self._catalog_lock is None:
            return
        try:
            self._catalog_lock.exec_driver_sql("SELECT 1")
            return
        except Exception:  # noqa: BLE001 - a dropped session, whatever the driver calls it
            pass
        try:
            self._catalog_lock.close()
        except Exception:  # noqa: BLE001
            pass
        self._catalog_lock = None
        self._catalog_lock = identity.lock_catalog(self)  # while the server is down: OperationalError, retried

    def _save_image(self, fs_path, path, sha256, hw, segments, error) -> tuple[list[int], list[int]]:
        with self.sessions.begin() as s:
            old = s.scalar(select(ImageRecord).where(ImageRecord.fs_path == fs_path))
            attempts = 1
            removed: list[int] = []
            if old is not None:
                attempts = old.attempts + 1
                removed = list(s.scalars(select(SegmentRecord.id).where(SegmentRecord.image_id == old.id)))
                s.delete(old)
                s.flush()
            record = ImageRecord(
                fs_path=fs_path,
                path=path,
                sha256=sha256,
                height=hw[0] if hw else None,
                width=hw[1] if hw else None,
                status=FAILED if error is not None else DONE,
                error_class=type(error).__name__ if error is not None else None,
                error_message=str(error)[:2000] if error is not None else None,
                attempts=attempts,
            )
            record.segments = [SegmentRecord(**seg) for seg in segments]
            s.add(record)
            s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
            s.flush()
            return removed, [seg.id for seg in record.segments]

    def remove_image(self, image_id: int) -> list[int]:
        """Delete an image and its segments in one transaction; their segment ids."""

        def remove() -> list[int]:
            with self.sessions.begin() as s:
                record = s.get(ImageRecord, image_id)
                if record is None:
                    return []
                removed = list(s.scalars(select(SegmentRecord.id).where(SegmentRecord.image_id == image_id)))
                s.delete(record)
                s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
                return removed

        return self.retrying(remove)

    def image_files(self) -> list[tuple[int, bytes, str]]:
        """(id, fs_path, path) of every image the index has, done or failed."""
        with self.sessions() as s:
            return [
                tuple(r)
                for r in s.execute(
                    select(ImageRecord.id, ImageRecord.fs_path, ImageRecord.path).order_by(ImageRecord.id)
                )
            ]

    def image(self, image_id: int) -> ImageRecord | None:
        with self.sessions() as s:
            return s.get(ImageRecord, image_id)

    def image_segment_ids(self, image_id: int) -> list[int]:
        with self.sessions() as s:
            q = select(SegmentRecord.id).where(SegmentRecord.image_id == image_id).order_by(SegmentRecord.area.desc())
            return list(s.scalars(q))

    def failures(self) -> list[ImageRecord]:
        with self.sessions() as s:
            return list(s.scalars(select(ImageRecord).where(ImageRecord.status == FAILED).order_by(ImageRecord.path)))

    def counts(self) -> dict[str, int]:
        with self.sessions() as s:
            by_status = dict(s.execute(select(ImageRecord.status, func.count()).group_by(ImageRecord.status)).all())
            return {
                "images_done": by_status.get(DONE, 0),
                "images_failed": by_status.get(FAILED, 0),
                "segments": s.scalar(select(func.count(SegmentRecord.id))) or 0,
            }

    def common_folder(self) -> str | None:
        """The deepest folder holding every indexed image. Paths sort so that the
        common prefix of the first and the last is that of all: two index lookups."""
        path = (
            ImageRecord.path if self.engine.dialect.name == "sqlite" else ImageRecord.path.collate("C")
        )  # bytewise order
        with self.sessions() as s:
            first, last = s.execute(select(func.min(path), func.max(path))).one()
        if first is None:
            return None
        prefix = os.path.commonprefix([first, last])
        return prefix if prefix.endswith("/") else os.path.dirname(prefix) + "/"

    # -- segments ----------------------------------------------------------------
    def max_segment_id(self) -> int:
        """The highest committed segment id (0 when there is none)."""
        with self.sessions() as s:
            return s.scalar(select(func.max(SegmentRecord.id))) or 0

    def segment_ids(self) -> np.ndarray:
        with self.sessions() as s:
            return np.fromiter(s.scalars(select(SegmentRecord.id)), dtype=np.int64)

    def segment_ids_between(self, low: int, high: int) -> np.ndarray:
        """Committed segment ids in [low, high], through the primary key."""
        with self.sessions() as s:
            q = (
                select(SegmentRecord.id)
                .where(SegmentRecord.id >= low, SegmentRecord.id <= high)
                .order_by(SegmentRecord.id)
            )
            return np.fromiter(s.scalars(q), dtype=np.int64)

    def image_ids_matching(self, path: str) -> set[int]:
        """Ids of the done images whose path matches the glob. The glob's literal
        prefix is looked up in the path index, so a glob under one folder reads that
        folder's rows, not every image's."""
        prefix = path[: min((path.find(c) for c in "*?[" if c in path), default=len(path))]
        query = select(ImageRecord.id, ImageRecord.path).where(ImageRecord.status == DONE)
        if prefix:
            query = query.where(_starts_with(ImageRecord.path, prefix, self.engine.dialect.name))
        with self.sessions() as s:
            rows = s.execute(query).all()
        return {i for i, p in rows if fnmatch.fnmatchcase(p, path)}

    def done_image_count(self) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(ImageRecord).where(ImageRecord.status == DONE)) or 0

    def sample_areas(self, size: int = 10_000, seed: int = 0) -> np.ndarray:
        """Areas of about ``size`` segments picked at random (by id, through the
        primary key): enough to estimate how many a --min-area keeps."""
        with self.sessions() as s:
            low, high = s.execute(select(func.min(SegmentRecord.id), func.max(SegmentRecord.id))).one()
            if low is None:
                return np.zeros(0, np.int64)
            ids = np.unique(np.random.default_rng(seed).integers(low, high + 1, size)).tolist()
            out = [
                np.fromiter(
                    s.scalars(select(SegmentRecord.area).where(SegmentRecord.id.in_(ids[i : i + 900]))), np.int64
                )
                for i in range(0, len(ids), 900)
            ]  # 900: SQLite's bound-parameter limit
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def segment_locations_with_area(self, min_area: int) -> np.ndarray:
        """[n, 3] (id, chunk, row) of the segments of at least ``min_area`` pixels
        (through the area index): a selection, and where its embeddings lie."""
        seg = SegmentRecord
        return self._locations([select(seg.id, seg.vec_chunk, seg.vec_row).where(seg.area >= min_area)])

    def segment_locations_of_images(self, image_ids: Iterable[int], min_area: int = 0) -> np.ndarray:
        """[n, 3] (id, chunk, row) of the segments of these images (of at least
        ``min_area`` pixels)."""
        seg, wanted = SegmentRecord, sorted(image_ids)
        queries = []
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
            q = select(seg.id, seg.vec_chunk, seg.vec_row).where(seg.image_id.in_(wanted[start : start + 900]))
            queries.append(q.where(seg.area >= min_area) if min_area else q)
        return self._locations(queries)

    def segment_locations(self, ids: Iterable[int]) -> np.ndarray:
        """[n, 3] (id, chunk, row) of these segments (the committed ones), in no set
        order. SQLite takes every id as one JSON parameter through its own driver: a
        compressed index's 1,000 re-scored candidates cost 2.4 ms here, not 4.9 ms in
        900-id IN lists through SQLAlchemy (``scale.py``'s 200k index)."""
        seg, wanted = SegmentRecord, [int(i) for i in ids]
        if self.engine.dialect.name == "sqlite" and wanted:
            found = self._sqlite_locations(wanted)
            if found is not None:
                return found
        return self._locations(
            [
                select(seg.id, seg.vec_chunk, seg.vec_row).where(seg.id.in_(wanted[i : i + 900]))
                for i in range(0, len(wanted), 900)
            ]
        )  # 900: SQLite's bound-parameter limit

    def _sqlite_locations(self, wanted: list[int]) -> np.ndarray | None:
        """None where this SQLite lacks ``json_each`` (then the IN lists serve)."""
        import json
        import sqlite3

        try:
            with self.engine.connect() as conn:
                rows = conn.connection.dbapi_connection.execute(
                    "SELECT id, vec_chunk, vec_row FROM segments WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(wanted),),
                ).fetchall()
        except sqlite3.OperationalError as exc:
            if "json_each" not in str(exc):
                raise
            return None
        return np.array(rows, np.int64).reshape(-1, 3)

    def _locations(self, queries) -> np.ndarray:
        with self.engine.connect() as conn:  # plain rows: no ORM objects for thousands of ids
            values = [v for q in queries for row in conn.execute(q) for v in tuple(row)]
        return np.fromiter(values, np.int64, len(values)).reshape(-1, 3)

    def files(self) -> EmbeddingFiles:
        if self._files is None:
            info = self.info()
            if info is None:
                raise UsesearchError("this index has no identity yet, so no embedding dimension")
            self._files = EmbeddingFiles(self.folder / EMBEDDINGS_FOLDER, info.dim)
        return self._files

    def embeddings(
        self, ids: Iterable[int] | None = None, batch: int = 50_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) in batches: all committed segments (streamed, in id
        order), or just ``ids``."""
        seg = SegmentRecord
        query = select(seg.id, seg.vec_chunk, seg.vec_row).order_by(seg.id)
        with self.sessions() as s:
            if ids is None:
                parts = s.execute(query).yield_per(batch).partitions(batch)
            else:
                wanted = [int(i) for i in ids]
                # 900 per query: SQLite's bound-parameter limit.
                parts = (
                    s.execute(query.where(seg.id.in_(wanted[i : i + 900]))).all() for i in range(0, len(wanted), 900)
                )
            for part in parts:
                if part:
                    table = np.array([tuple(r) for r in part], np.int64)
                    yield table[:, 0], self.files().read(table[:, 1], table[:, 2], ids=table[:, 0])

    def damaged_images(self, batch: int = 50_000) -> list[int]:
        """Images with a segment whose embedding row fails its checksum (every row read;
        rows written before checksums get one first, from the rows as they are)."""
        self.files().backfill_sums()
        seg, found = SegmentRecord, set()
        query = select(seg.image_id, seg.vec_chunk, seg.vec_row).order_by(seg.id)
        with self.sessions() as s:
            for part in s.execute(query).yield_per(batch).partitions(batch):
                table = np.array([tuple(r) for r in part], np.int64)
                found.update(table[self.files().damaged(table[:, 1], table[:, 2]), 0].tolist())
        return sorted(found)

    def rows(self, ids: Iterable[int]) -> dict[int, SegmentRow]:
        wanted = [int(i) for i in ids]
        out: dict[int, SegmentRow] = {}
        with self.sessions() as s:
            for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
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
                    )
                    .join(ImageRecord)
                    .where(seg.id.in_(wanted[start : start + 900]))
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
                    )
        return out


def _starts_with(column, prefix: str, dialect: str):
    """``column`` starts with ``prefix``, in a form the path index can answer. SQLite
    compares text bytewise (BINARY collation), so a range does it; elsewhere (a
    PostgreSQL locale collation orders differently) an escaped LIKE."""
    if dialect == "sqlite":
        return (column >= prefix) & (column < prefix + "\U0010ffff")
    return column.startswith(prefix, autoescape=True)
