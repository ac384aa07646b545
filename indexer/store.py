"""Segment metadata and embeddings in SQL (SQLite by default) through SQLAlchemy 2.0.

The database is the source of truth: every embedding is stored with its segment,
one transaction per image, so the FAISS file can always be rebuilt from it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, create_engine, event, func, inspect, select, text, update
from usesearch.errors import UsesearchError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

DONE, FAILED = "done", "failed"


class Base(DeclarativeBase):
    pass


class IndexInfo(Base):
    """The one row that says which embedding space (and masker) the index lives in."""

    __tablename__ = "index_info"
    id: Mapped[int] = mapped_column(primary_key=True)
    preset: Mapped[str] = mapped_column(String(64))
    embedder: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str] = mapped_column(String(128))
    head: Mapped[str | None] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    masker: Mapped[str] = mapped_column(String(64))
    masker_params: Mapped[dict[str, Any]] = mapped_column(JSON)
    factory: Mapped[str] = mapped_column(String(256))
    # Bumped in the same transaction as every image write: readers compare one
    # integer to learn whether committed segments changed.
    generation: Mapped[int] = mapped_column(default=0)
    created: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))


class ImageRecord(Base):
    __tablename__ = "images"
    __table_args__ = (Index("ix_images_sha256", "sha256"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None]
    height: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(8))
    error_class: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=1)
    updated: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))
    segments: Mapped[list[SegmentRecord]] = relationship(back_populates="image", cascade="all, delete-orphan")


class SegmentRecord(Base):
    __tablename__ = "segments"
    # AUTOINCREMENT: SQLite must never hand a deleted segment's id to a new one,
    # or a stale FAISS vector would answer for it.
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    x: Mapped[int]
    y: Mapped[int]
    w: Mapped[int]
    h: Mapped[int]
    area: Mapped[int] = mapped_column(index=True)
    rle_counts: Mapped[str] = mapped_column(Text)  # COCO compressed RLE of the full-size mask
    predicted_iou: Mapped[float | None] = mapped_column(Float)
    stability_score: Mapped[float | None] = mapped_column(Float)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32, unit norm
    image: Mapped[ImageRecord] = relationship(back_populates="segments")


@dataclass(frozen=True)
class SegmentRow:
    """A segment's metadata joined with its image, as queries return it."""

    id: int
    image_id: int
    image_path: str
    image_hw: tuple[int, int]
    bbox: tuple[int, int, int, int]
    area: int
    rle_counts: str
    predicted_iou: float | None
    stability_score: float | None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets queries read committed data while the indexer writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._upgrade_schema()
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _upgrade_schema(self) -> None:
        """Add columns that newer versions introduced with a default; refuse anything else."""
        inspector = inspect(self.engine)
        for table in Base.metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                default = column.default.arg if column.default is not None and column.default.is_scalar else None
                if default is None:
                    raise UsesearchError(
                        f"this index was made by an older usesearch (table {table.name} lacks {column.name}); "
                        "index into a new --db"
                    )
                with self.engine.begin() as conn:
                    ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(self.engine.dialect)} DEFAULT {int(default)}"
                    conn.execute(text(ddl))

    def close(self) -> None:
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

    def set_factory(self, factory: str) -> None:
        with self.sessions.begin() as s:
            s.scalar(select(IndexInfo)).factory = factory

    # -- images ------------------------------------------------------------------
    def image_by_path(self, path: str) -> ImageRecord | None:
        with self.sessions() as s:
            return s.scalar(select(ImageRecord).where(ImageRecord.path == path))

    def done_with_hash(self, sha256: str) -> ImageRecord | None:
        with self.sessions() as s:
            return s.scalar(select(ImageRecord).where(ImageRecord.sha256 == sha256, ImageRecord.status == DONE).limit(1))

    def save_image(
        self,
        path: str,
        sha256: str | None,
        hw: tuple[int, int] | None,
        segments: Iterable[dict[str, Any]] = (),
        error: BaseException | None = None,
    ) -> tuple[list[int], list[int]]:
        """Replace whatever the path had by this result, in one transaction.
        Returns (segment ids removed, segment ids added)."""
        with self.sessions.begin() as s:
            old = s.scalar(select(ImageRecord).where(ImageRecord.path == path))
            attempts = 1
            removed: list[int] = []
            if old is not None:
                attempts = old.attempts + 1
                removed = list(s.scalars(select(SegmentRecord.id).where(SegmentRecord.image_id == old.id)))
                s.delete(old)
                s.flush()
            record = ImageRecord(
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

    # -- segments ----------------------------------------------------------------
    def segment_ids(self) -> np.ndarray:
        with self.sessions() as s:
            return np.fromiter(s.scalars(select(SegmentRecord.id)), dtype=np.int64)

    def embeddings(self, ids: Iterable[int] | None = None, batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in batches: all committed segments (streamed), or just ``ids``."""
        query = select(SegmentRecord.id, SegmentRecord.embedding).order_by(SegmentRecord.id)
        with self.sessions() as s:
            if ids is None:
                parts = s.execute(query).yield_per(batch).partitions(batch)
            else:
                wanted = [int(i) for i in ids]
                # 900 per query: SQLite's bound-parameter limit.
                parts = (s.execute(query.where(SegmentRecord.id.in_(wanted[i : i + 900]))).all() for i in range(0, len(wanted), 900))
            for part in parts:
                if part:
                    yield (
                        np.fromiter((r[0] for r in part), np.int64, len(part)),
                        np.stack([np.frombuffer(r[1], np.float32) for r in part]),
                    )

    def rows(self, ids: Iterable[int]) -> dict[int, SegmentRow]:
        wanted = [int(i) for i in ids]
        out: dict[int, SegmentRow] = {}
        with self.sessions() as s:
            for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
                # Named columns, not the ORM entity: the embedding blob stays on disk.
                seg = SegmentRecord
                q = (
                    select(seg.id, seg.image_id, ImageRecord.path, ImageRecord.height, ImageRecord.width, seg.x, seg.y, seg.w, seg.h,
                           seg.area, seg.rle_counts, seg.predicted_iou, seg.stability_score)
                    .join(ImageRecord)
                    .where(seg.id.in_(wanted[start : start + 900]))
                )
                for r in s.execute(q):
                    out[r.id] = SegmentRow(
                        r.id, r.image_id, r.path, (r.height, r.width), (r.x, r.y, r.w, r.h), r.area,
                        r.rle_counts, r.predicted_iou, r.stability_score,
                    )
        return out


def info_summary(info: IndexInfo) -> str:
    return f"preset {info.preset!r}, embedder {info.embedder!r}, model {info.fingerprint}" + (
        f", head {info.head}" if info.head else ""
    )


def dumps_params(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)
