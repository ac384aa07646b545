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

import os
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Connection, create_engine, event, func, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from usesearch.errors import IndexUpgradeNeededError, UsesearchError

from . import identity, migrations
from .annotation_lookups import AnnotationLookups
from .annotation_writes import AnnotationWrites
from .catalog import (
    connection_failed,
    immutable_url,
    index_flags,
    server_url,
    shown_url,
    sqlite_pragmas,
    sqlite_read_pragmas,
    while_reachable,
)
from .embeddings import FOLDER as EMBEDDINGS_FOLDER
from .embeddings import EmbeddingFiles
from .image_writes import ImageWrites, PhotoWrite, annotations_by_split
from .index_info_records import IndexInfoRecords
from .lookups import SearchLookups
from .records import DONE, FAILED, Base, ImageRecord, IndexInfo, SegmentRecord

T = TypeVar("T")


class Store(SearchLookups, AnnotationLookups, AnnotationWrites, ImageWrites, IndexInfoRecords):
    """``read_only=True`` is for readers (query, info, serve): it never creates or
    alters tables, and falls back to an immutable open where SQLite cannot write its
    side files (a read-only folder or mount)."""

    def __init__(self, url: str, read_only: bool = False, folder: str | os.PathLike | None = None):
        self.url = url
        self.read_only = read_only
        self.retried = False  # a write was tried again (``retrying``): one try before may have committed
        self.annotations_lost: Counter[str] = Counter()
        self.proposals_lost: list[str] = []
        database = make_url(url).database if url.startswith("sqlite") else None
        # Embedding files live in the index folder (beside segments.sqlite).
        if folder is not None:
            self.folder = Path(folder)
        elif database:
            self.folder = Path(database).parent
        else:
            raise ValueError("a store on a database server needs the folder for its embedding files")
        self.engine = (
            create_engine(url) if url.startswith("sqlite") else create_engine(server_url(url), pool_pre_ping=True)
        )  # a restarted server's dead connections are replaced, not used
        try:
            self._open(url, read_only)
        except OperationalError as exc:
            if self.engine.dialect.name == "sqlite":
                raise
            raise connection_failed(exc, url) from None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._files: EmbeddingFiles | None = None
        self._catalog_lock: Connection | None = None
        if read_only:
            try:
                identity.check(self, assign=False)
            except BaseException:
                self.engine.dispose()
                raise

    def claim(self, adopt: bool = False) -> None:
        """For the one writer (under the folder's lock): lock the catalog, then check
        (and give a new or older index) the id that pairs it with this folder, and that
        no copy of the folder wrote to it since this one did (``adopt``: ``--repair``'s
        taking it up again, ``identity.check_writer``)."""
        self._catalog_lock = identity.lock_catalog(self)
        try:
            identity.check(self, assign=True)
            identity.check_writer(self, adopt)
        except BaseException:
            self.close()
            raise

    def _open(self, url: str, read_only: bool) -> None:
        sqlite = self.engine.dialect.name == "sqlite"
        # What messages call the catalog: a server's whole URL (its password hidden), as every other says it.
        named = (make_url(url).database or url) if sqlite else shown_url(url)
        if sqlite:
            event.listen(self.engine, "connect", sqlite_read_pragmas if read_only else sqlite_pragmas)
        if read_only:
            try:
                tables = set(inspect(self.engine).get_table_names())
            except OperationalError:
                if not sqlite:
                    raise
                self.engine.dispose()
                self.engine = create_engine(immutable_url(url))
                tables = set(inspect(self.engine).get_table_names())
            self._has_vector_state = "vector_state" in tables  # made by a writable open since
            # Cut short: SQLite's with none or some of our tables alone (each made in a transaction
            # of its own); a server's with its index_info (a database of our names without it is another's).
            ours = tables <= set(Base.metadata.tables)
            if "segments" not in tables and ours and (sqlite or "index_info" in tables):
                raise UsesearchError(
                    f"{named} was cut short while it was being made (it has no segments "
                    f"table): `usesearch index PHOTOS --db {self.folder}` makes the rest"
                )
            if "index_info" not in tables:
                raise UsesearchError(f"{named} is not a usesearch index (it has no index_info table)")
            missing = migrations.missing_columns(self.engine)
            if missing:
                raise IndexUpgradeNeededError(
                    f"this index needs an upgrade ({', '.join(missing[:3])} missing), which only a writable open "
                    "makes: run any usesearch command on it where its folder is writable and no indexer is writing"
                )
        else:
            with identity.schema_lock(self):  # (another first run's tables, seen made)
                tables = set(inspect(self.engine).get_table_names())
                migrations.refuse_foreign_tables(tables, named)
                if "index_info" not in tables:
                    identity.refuse_a_new_catalog(self)
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

    # -- images ------------------------------------------------------------------
    def image_by_path(self, fs_path: bytes) -> ImageRecord | None:
        return self.retrying(lambda: self._one(select(ImageRecord).where(ImageRecord.fs_path == fs_path)))

    def images_with_hash(self, sha256: str, most: int = 16, status: str = DONE) -> list[ImageRecord]:
        """The images of this content with ``status`` (done: several where ``index --coco``
        indexed copies under their own names), oldest first."""

        def read() -> list[ImageRecord]:
            query = select(ImageRecord).where(ImageRecord.sha256 == sha256, ImageRecord.status == status)
            with self.sessions() as s:
                return list(s.scalars(query.order_by(ImageRecord.id).limit(most)))

        return self.retrying(read)

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
        file_stat: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """Replace whatever the file had by this result, in one transaction
        (``save_images``, for one photo). Returns (segment ids removed, segment ids added)."""
        return self.save_images([PhotoWrite(fs_path, path, sha256, hw, list(segments), vectors, error, file_stat)])[0]

    def retrying(self, write: Callable[[], T]) -> T:
        """A write transaction, tried again while a database server is unreachable
        (``catalog.while_reachable``: each try commits all or nothing, so a retry
        never leaves half an image), each try first keeping the catalog's lock."""

        tries = 0

        def attempt() -> T:
            nonlocal tries
            tries += 1
            self.retried = self.retried or tries > 1  # ``Writer`` then reconciles FAISS with what committed
            self._catalog_lock = identity.kept_catalog_lock(self, self._catalog_lock)
            return write()

        return while_reachable(attempt, self.url)

    def _as_writer(self, statement: Callable[[], T]) -> T:
        """A writer's statement about its FAISS files (generations, checksums) or its
        first commit's set-up, tried again as its writes are while the server is
        unreachable (an outage there ended the run at once); a reader's, once."""
        return statement() if self.read_only else self.retrying(statement)

    def remove_image(self, image_id: int, lost_annotations: bool = False) -> list[int]:
        """Delete an image and its segments in one transaction; their segment ids.
        ``lost_annotations``: its annotations counted in ``annotations_lost`` (its
        content changed: they went with the old one)."""

        def counted() -> Counter[str]:  # read first: a retry after a commit whose reply was lost finds none
            with self.sessions() as s:
                return annotations_by_split(s, image_id)

        def remove() -> list[int]:
            with self.sessions.begin() as s:
                record = s.get(ImageRecord, image_id)
                if record is None:
                    return []
                removed = list(s.scalars(select(SegmentRecord.id).where(SegmentRecord.image_id == image_id)))
                s.delete(record)
                s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
                return removed

        lost = self.retrying(counted) if lost_annotations else Counter()
        removed = self.retrying(remove)
        self.annotations_lost.update(lost)
        return removed

    def image_files(self) -> list[tuple[int, bytes, str]]:
        """(id, fs_path, path) of every image the index has, done or failed."""
        with self.sessions() as s:
            query = select(ImageRecord.id, ImageRecord.fs_path, ImageRecord.path).order_by(ImageRecord.id)
            return [(image_id, fs_path, path) for image_id, fs_path, path in s.execute(query)]

    def image(self, image_id: int) -> ImageRecord | None:
        with self.sessions() as s:
            return s.get(ImageRecord, image_id)

    def image_segment_ids(self, image_id: int) -> list[int]:
        with self.sessions() as s:
            q = select(SegmentRecord.id).where(SegmentRecord.image_id == image_id).order_by(SegmentRecord.area.desc())
            return list(s.scalars(q))

    def failures(self) -> list[ImageRecord]:
        """Files that failed, and indexed files whose last run failed (status DONE, an
        error noted: their segments are kept)."""
        failing = (ImageRecord.status == FAILED) | ImageRecord.error_class.is_not(None)
        with self.sessions() as s:
            return list(s.scalars(select(ImageRecord).where(failing).order_by(ImageRecord.path)))

    def photos_recorded(self) -> int:
        """Photos the catalog has a row for (done or failed)."""
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(ImageRecord)) or 0

    def counts(self) -> dict[str, int]:
        with self.sessions() as s:
            by_status = dict(s.execute(select(ImageRecord.status, func.count()).group_by(ImageRecord.status)).all())
            return {
                "images_done": by_status.get(DONE, 0),
                "images_failed": by_status.get(FAILED, 0),
                "images_failing_kept": len(self.kept_failure_ids()),  # indexed, failing now: `failures` lists them
                "segments": s.scalar(select(func.count()).select_from(SegmentRecord)) or 0,  # count(*): fast
            }

    def common_folder(self) -> str | None:
        """The deepest folder holding every indexed image. Paths sort so that the
        common prefix of the first and the last is that of all: two index lookups."""
        path = ImageRecord.path if self.engine.dialect.name == "sqlite" else ImageRecord.path.collate("C")  # bytewise
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

    def files(self) -> EmbeddingFiles:
        if self._files is None:
            info = self.info()  # (a writer's read waits out an outage, as its writes do: ``info``)
            if info is None:
                raise UsesearchError("this index has no identity yet, so no embedding dimension")
            self._files = EmbeddingFiles(
                self.folder / EMBEDDINGS_FOLDER,
                info.dim,
                flags=index_flags(self.folder, self.url),
                before_change=None if self.read_only else _token_taker(self),
            )
        return self._files

    def embeddings(
        self, ids: Iterable[int] | None = None, batch: int = 50_000, up_to: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) in batches: all committed segments (streamed, in id
        order; with ``up_to``, those with ids up to it), or just ``ids``."""
        seg = SegmentRecord
        query = select(seg.id, seg.vec_chunk, seg.vec_row).order_by(seg.id)
        with self.sessions() as s:
            if ids is None:
                query = query if up_to is None else query.where(seg.id <= up_to)
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


def _token_taker(store: Store) -> Callable[[], None]:
    """``identity.take_writer_token`` of ``store``, through a weak reference: a strong one
    made a cycle (store, its embedding files, this) that kept the files' maps of chunks a
    compaction deleted until a garbage collection, holding their disk space."""
    ref = weakref.ref(store)

    def take() -> None:
        held = ref()
        if held is not None:
            identity.take_writer_token(held)

    return take
