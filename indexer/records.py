"""The catalog's tables (SQLAlchemy 2.0 typed models) and the row type queries return.

``store.py`` reads and writes them; ``migrations.py`` upgrades an older index's
tables to these.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

DONE, FAILED = "done", "failed"
# What made a segment (``SegmentRecord.source``): a masker's proposal, or an annotation
# of a labelled dataset (``usesearch index IMAGES --coco FILE.json``).
PROPOSAL, ANNOTATION = "proposal", "annotation"
NO_MASKER = "none"  # IndexInfo.masker of an index holding annotations only, until a masker run names its own


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
    # "auto": the factory follows the collection's size (index_choice.py); "fixed": --factory chose it.
    index_mode: Mapped[str] = mapped_column(String(8), default="auto")
    # Bumped in the same transaction as every image write: readers compare one
    # integer to learn whether committed segments changed.
    generation: Mapped[int] = mapped_column(default=0)
    # SHA-256 of the FAISS file (shard 0) as last written: a file that does not match is rebuilt.
    vectors_sha256: Mapped[str | None] = mapped_column(String(64))
    # Segment ids per FAISS shard (ids 1..shard_size in shard 0, the next in shard 1...);
    # 0: one shard. Shards share one trained quantizer and codebook.
    shard_size: Mapped[int] = mapped_column(default=0)
    created: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def model_head(self) -> str | None:
        """The head its segments were embedded with, which every loader of its model takes:
        none for the crop embedder, whatever ``head`` says (an index made before --head
        was refused beside crop recorded one it never used)."""
        return None if self.embedder == "crop" else self.head


class VectorShard(Base):
    """SHA-256 of each FAISS shard file past the first, as last written."""

    __tablename__ = "vector_shards"
    shard: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))


class VectorState(Base):
    """The generation the FAISS files (every shard) held exactly when last written (one
    row): an index opening at that generation skips comparing every id with the store.
    A table of its own, so an index made before it still opens read-only."""

    __tablename__ = "vector_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int | None]  # None while the files are being written, or not in sync


class IndexIdentity(Base):
    """Which index folder this catalog belongs to (one row): the id also written in
    the folder's ``embeddings/index-id``, since the catalog's (chunk, row) pointers
    mean something only in that folder's embedding files. A table of its own, so an
    index made before it still opens read-only."""

    __tablename__ = "index_identity"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[str] = mapped_column(String(36))


class IndexWriter(Base):
    """The last writer of a catalog on a database server (one row): the token its folder
    also keeps (``identity.check_writer``), and where it wrote from. A copy of the folder
    has the same index id, so only this tells a folder the catalog has moved on without
    it. A table of its own: readers never need it, and an older catalog gets it unasked."""

    __tablename__ = "index_writer"
    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(36))
    folder: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column()


class ImageRecord(Base):
    __tablename__ = "images"
    # AUTOINCREMENT: SQLite must never hand a removed or changed photo's id to a new one,
    # or what is keyed by it outlives it (an audit's verdict on a leak, an export's ids).
    __table_args__ = (
        Index("ix_images_sha256", "sha256"),
        Index("ix_images_path", "path"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    fs_path: Mapped[bytes] = mapped_column(LargeBinary, unique=True)  # exactly what the OS opens
    path: Mapped[str] = mapped_column(Text)  # display form (undecodable bytes as \xNN)
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None]
    height: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(8))
    error_class: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=1)
    # False while the photo holds only a labelled dataset's annotations: a masker run
    # still has to make its proposals (an index made before annotations: every row True).
    proposals_made: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # "size:mtime_ns:ctime_ns:inode" of the file as it was before the read that hashed it:
    # a re-run finding the same skips the file unread (NULL: read and hashed, as before).
    file_stat: Mapped[str | None] = mapped_column(String(96))
    updated: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))
    segments: Mapped[list[SegmentRecord]] = relationship(back_populates="image", cascade="all, delete-orphan")


class CopyRecord(Base):
    """A file met holding an indexed photo's content under another path (a copy, a hard
    link): skipped, not indexed, and its stat kept so a re-run skips it unread (a folder
    of copies was read and hashed whole on every run)."""

    __tablename__ = "copies"
    fs_path: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    file_stat: Mapped[str] = mapped_column(String(96))


class SegmentRecord(Base):
    __tablename__ = "segments"
    # AUTOINCREMENT: SQLite must never hand a deleted segment's id to a new one,
    # or a stale FAISS vector would answer for it.
    # (source, image_id): the audit's pass over the annotated photos, a batch at a time
    # past the last image id, reads a range of it; with an index on the source alone each
    # batch read every annotation (quadratic: 53 s of queries at 160k photos, 0.13 s now).
    __table_args__ = (Index("ix_segments_source_image", "source", "image_id"), {"sqlite_autoincrement": True})
    # 64 bits on PostgreSQL (SQLite's INTEGER is): ids are never reused, and an archive's
    # runs pass 2**31 of them (10^7 photos, ~100 masks each, indexed again as they change).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    x: Mapped[int]
    y: Mapped[int]
    w: Mapped[int]
    h: Mapped[int]
    area: Mapped[int] = mapped_column(index=True)
    rle_counts: Mapped[str] = mapped_column(Text)  # COCO compressed RLE of the full-size mask
    predicted_iou: Mapped[float | None] = mapped_column(Float)
    stability_score: Mapped[float | None] = mapped_column(Float)
    # The embedding: row ``vec_row`` of chunk file ``vec_chunk`` (see embeddings.py).
    vec_chunk: Mapped[int]
    vec_row: Mapped[int]
    # PROPOSAL, or ANNOTATION with the COCO annotation's id, class name, iscrowd and
    # split (the COCO file's stem unless named); NULL for proposals.
    source: Mapped[str] = mapped_column(String(16), default=PROPOSAL, server_default=PROPOSAL)
    annotation_id: Mapped[int | None] = mapped_column(BigInteger)
    category: Mapped[str | None] = mapped_column(String(256), index=True)
    iscrowd: Mapped[bool | None] = mapped_column(Boolean)
    split: Mapped[str | None] = mapped_column(String(128), index=True)
    image: Mapped[ImageRecord] = relationship(back_populates="segments")


class SegmentFacts(NamedTuple):
    """What the filters checked on a search's candidates read of a segment: its photo,
    area and labels, without its RLE or its photo's path (``SegmentRow``: far more bytes)."""

    image_id: int
    area: int
    source: str
    category: str | None
    split: str | None


@dataclass(frozen=True)
class SegmentRow:
    """A segment's metadata joined with its image, as queries return it."""

    id: int
    image_id: int
    image_path: str
    image_fs_path: bytes
    image_hw: tuple[int, int]
    bbox: tuple[int, int, int, int]
    area: int
    rle_counts: str
    predicted_iou: float | None
    stability_score: float | None
    source: str = PROPOSAL
    annotation_id: int | None = None
    category: str | None = None
    iscrowd: bool | None = None
    split: str | None = None


class AnnotationProblem(Base):
    """An annotation (or a whole COCO image entry) of a labelled dataset that could not
    be indexed, and why: a photo missing, a broken RLE or polygon, a duplicate id, an
    unknown category, an empty mask. Photos that cannot be read are image failures
    (``ImageRecord``) like any other; these are the dataset's own faults. A re-run of a
    split records its problems afresh. A table of its own, so an index made before it
    still opens read-only."""

    __tablename__ = "annotation_problems"
    id: Mapped[int] = mapped_column(primary_key=True)
    split: Mapped[str] = mapped_column(String(128), index=True)
    coco_file: Mapped[str] = mapped_column(Text)
    file_name: Mapped[str | None] = mapped_column(Text)  # the COCO image entry's, where known
    annotation_id: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class _OfSplitFile:
    """Columns of a table keyed by a labelled dataset's split and the COCO file indexed as it
    (first, as the tables were laid out before)."""

    split: Mapped[str] = mapped_column(String(128), primary_key=True, sort_order=-2)
    coco_file: Mapped[str] = mapped_column(String(1024), primary_key=True, sort_order=-1)


class LabelledFile(_OfSplitFile, Base):
    """Which COCO file(s) each split of a labelled dataset was indexed from: a re-run
    removes the annotations its file no longer has only where the split is that file's
    alone (two files indexed as one split keep each other's). A table of its own, so an
    index made before it still opens read-only."""

    __tablename__ = "labelled_files"
    indexed: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))


class LabelledPass(_OfSplitFile, Base):
    """A COCO file's pass over a split begun and not finished: an ``index --coco`` run
    stopped (Ctrl-C, killed, failed), and the split holds part of the file's changes.
    Cleared by a whole pass; ``info`` and the audit say it. A table of its own, so an
    index made before it still opens read-only."""

    __tablename__ = "labelled_passes"
    started: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))


class ListedPhoto(_OfSplitFile, Base):
    """A photo a split's COCO file lists with no annotation (a negative, or one whose
    objects its annotators all missed): the audit searches its proposals for overlooked
    objects as it does an annotated photo's. By the photo's path bytes, as ``images``
    keys it; each whole pass of the file sets its list afresh. A table of its own, so
    an index made before it still opens read-only."""

    __tablename__ = "listed_photos"
    fs_path: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True, index=True)  # (the audit joins on it)


class IndexedFolder(Base):
    """A folder an ``index`` run walked, by its real path: a picture a search writes
    under it (``--show``) would be taken for a photo by the next run over it. A table of
    its own, so an index made before it still opens read-only."""

    __tablename__ = "indexed_folders"
    fs_path: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)


class AuditReview(Base):
    """A person's verdict on one item of an audit list (``usesearch audit``, the web
    app's audit view): ``ok`` (the label is right) or ``wrong``. Keyed by what the item
    is, not by its rank or run, so a verdict outlives every re-run of the audit. A table
    of its own, made on the first verdict where an older index lacks it."""

    __tablename__ = "audit_reviews"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)  # the list: swapped, overlooked, ...
    item: Mapped[str] = mapped_column(String(512), primary_key=True)  # e.g. "val:1234" (split:annotation id)
    verdict: Mapped[str] = mapped_column(String(8))
    reviewed: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.timezone.utc))
    # What the item was when judged (``reviews.state_of``: its segment and class): a verdict
    # on an annotation relabelled or redrawn since holds no more (NULL: given before this was kept).
    state: Mapped[str | None] = mapped_column(String(300))


def info_summary(info: IndexInfo) -> str:
    return f"preset {info.preset!r}, embedder {info.embedder!r}, model {info.fingerprint}" + (
        f", head {info.model_head}" if info.model_head else ""
    )
