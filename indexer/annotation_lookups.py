"""The store's reads over a labelled dataset indexed by its own masks (``usesearch
index IMAGES --coco FILE.json``): annotation segments and proposal segments as numpy
columns streamed in id order (so an audit can resume after the last id it finished),
their masks, their photos' content hashes, counts per source, split and category, and
the dataset's recorded problems. A part of ``Store`` (its base class), like
``lookups.py``; the embeddings themselves are read with ``store.files().read``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, exists, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from .lookups import SQL_PARAMETERS
from .records import (
    ANNOTATION,
    DONE,
    PROPOSAL,
    AnnotationProblem,
    ImageRecord,
    LabelledFile,
    LabelledPass,
    SegmentRecord,
)

BATCH = 100_000  # rows per streamed batch: ~10 MB of columns


@dataclass(frozen=True)
class SegmentColumns:
    """Segments as columns, one entry per segment. ``chunk``/``row`` locate each
    embedding (``store.files().read(chunk, row)``). ``category`` and ``split`` index
    the lists the batch came with (``categories``, ``splits``: ``Store.categories()``
    and ``Store.splits()`` when it was read); -1 for a proposal, which has neither."""

    id: np.ndarray  # int64
    image_id: np.ndarray  # int64
    chunk: np.ndarray  # int64
    row: np.ndarray  # int64
    area: np.ndarray  # int64
    bbox: np.ndarray  # int64 [n, 4]: x, y, w, h
    annotation_id: np.ndarray  # int64; -1 for a proposal
    category: np.ndarray  # int32 index into ``categories``; -1: none
    split: np.ndarray  # int32 index into ``splits``; -1: none
    iscrowd: np.ndarray  # bool (False for a proposal)
    categories: tuple[str, ...]
    splits: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.id)


class AnnotationLookups:
    """Read-only queries over annotation and proposal segments, by a ``Store``'s engine."""

    engine: Engine
    sessions: sessionmaker[Session]

    def categories(self) -> list[str]:
        """The class names of the annotation segments, sorted."""
        return self._distinct(SegmentRecord.category)

    def splits(self) -> list[str]:
        """The splits of the annotation segments, sorted."""
        return self._distinct(SegmentRecord.split)

    def has_source(self, source: str) -> bool:
        """Whether any segment is of ``source`` (one row read, through its index)."""
        with self.sessions() as s:
            return s.scalar(select(SegmentRecord.id).where(SegmentRecord.source == source).limit(1)) is not None

    def largest_area(self) -> int:
        """The largest segment's area in pixels (0: none), through the area's index."""
        with self.sessions() as s:
            return s.scalar(select(func.max(SegmentRecord.area))) or 0

    def _distinct(self, column) -> list[str]:
        with self.sessions() as s:
            query = select(column).where(SegmentRecord.source == ANNOTATION, column.is_not(None)).distinct()
            return sorted(s.scalars(query))

    def annotation_segments(
        self, split: str | None = None, category: str | None = None, after: int = 0, batch: int = BATCH
    ) -> Iterator[SegmentColumns]:
        """Annotation segments (of one split, one category, or all), in id order from
        the first id past ``after``, ``batch`` at a time."""
        seg = SegmentRecord
        query = _columns().where(seg.source == ANNOTATION)
        if split is not None:
            query = query.where(seg.split == split)
        if category is not None:
            query = query.where(seg.category == category)
        yield from self._stream(query.where(seg.id > after).order_by(seg.id), batch)

    def proposal_segments(
        self, image_ids: Iterable[int] | None = None, after: int = 0, batch: int = BATCH
    ) -> Iterator[SegmentColumns]:
        """Proposal segments (of these images, or all), in id order from the first id
        past ``after`` (with ``image_ids``: in id order within each 900 images), ``batch``
        at a time."""
        seg = SegmentRecord
        query = _columns().where(seg.source == PROPOSAL, seg.id > after).order_by(seg.id)
        if image_ids is None:
            yield from self._stream(query, batch)
            return
        wanted = sorted({int(i) for i in image_ids})
        for start in range(0, len(wanted), SQL_PARAMETERS):
            yield from self._stream(query.where(seg.image_id.in_(wanted[start : start + SQL_PARAMETERS])), batch)

    def _stream(self, query, batch: int) -> Iterator[SegmentColumns]:
        categories, splits = tuple(self.categories()), tuple(self.splits())
        category_index = {name: i for i, name in enumerate(categories)}
        split_index = {name: i for i, name in enumerate(splits)}
        with self.engine.connect() as conn:
            for part in conn.execution_options(yield_per=batch).execute(query).partitions(batch):
                table = np.array([r[:9] for r in part], np.int64).reshape(-1, 9)
                yield SegmentColumns(
                    id=table[:, 0],
                    image_id=table[:, 1],
                    chunk=table[:, 2],
                    row=table[:, 3],
                    area=table[:, 4],
                    bbox=table[:, 5:9],
                    annotation_id=np.array([-1 if r[9] is None else r[9] for r in part], np.int64),
                    category=np.array([category_index.get(r[10], -1) for r in part], np.int32),
                    split=np.array([split_index.get(r[11], -1) for r in part], np.int32),
                    iscrowd=np.array([bool(r[12]) for r in part], bool),
                    categories=categories,
                    splits=splits,
                )

    def segment_masks(self, ids: Iterable[int]) -> dict[int, dict]:
        """COCO compressed RLEs (``{"size": [h, w], "counts": str}``) of these segments."""
        seg, wanted = SegmentRecord, sorted({int(i) for i in ids})
        out: dict[int, dict] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), SQL_PARAMETERS):
                query = (
                    select(seg.id, ImageRecord.height, ImageRecord.width, seg.rle_counts)
                    .join(ImageRecord)
                    .where(seg.id.in_(wanted[start : start + SQL_PARAMETERS]))
                )
                out.update({i: {"size": [h, w], "counts": counts} for i, h, w, counts in conn.execute(query)})
        return out

    def image_hashes(self, image_ids: Iterable[int] | None = None) -> dict[int, str]:
        """The SHA-256 of each done photo's bytes (of these images, or all)."""
        query = select(ImageRecord.id, ImageRecord.sha256).where(ImageRecord.status == DONE)
        out: dict[int, str] = {}
        with self.engine.connect() as conn:
            if image_ids is None:
                out.update((i, sha) for i, sha in conn.execute(query) if sha is not None)
                return out
            wanted = sorted({int(i) for i in image_ids})
            for start in range(0, len(wanted), SQL_PARAMETERS):
                rows = conn.execute(query.where(ImageRecord.id.in_(wanted[start : start + SQL_PARAMETERS])))
                out.update((i, sha) for i, sha in rows if sha is not None)
            return out

    def contents_across_splits(self) -> dict[int, str]:
        """The SHA-256 of each annotated done photo whose content (its own or a copy's)
        has annotations in two splits or more: the audit's exact leaks, found by the
        database instead of from a dict of every photo's hash."""
        seg, image = SegmentRecord, ImageRecord
        annotated = (seg.image_id == image.id) & (seg.source == ANNOTATION)
        per_split = (
            select(image.sha256.label("sha"), seg.split.label("split"))
            .join(image, image.id == seg.image_id)
            .where(seg.source == ANNOTATION, image.status == DONE, image.sha256.is_not(None))
            .group_by(image.sha256, seg.split)
            .subquery()
        )
        straddling = select(per_split.c.sha).group_by(per_split.c.sha).having(func.count() > 1)
        query = select(image.id, image.sha256).where(image.status == DONE, image.sha256.in_(straddling))
        with self.engine.connect() as conn:
            return {i: sha for i, sha in conn.execute(query.where(exists().where(annotated))) if sha is not None}

    def label_counts(self) -> list[tuple[str, str | None, str | None, int]]:
        """(source, split, category, segments) for each combination present: the
        annotations grouped, reached through the index on ``source``, and the proposals
        counted as the rest (a GROUP BY over every segment read all 10^8 rows of an
        archive's index for ``info`` and ``audit``: a minute)."""
        seg = SegmentRecord
        with self.sessions() as s:
            query = select(seg.split, seg.category, func.count()).where(seg.source == ANNOTATION)
            grouped = s.execute(query.group_by(seg.split, seg.category))
            rows = [(ANNOTATION, split, category, int(n)) for split, category, n in grouped]
            total = s.scalar(select(func.count()).select_from(seg)) or 0
        if total > sum(r[3] for r in rows):
            rows.append((PROPOSAL, None, None, total - sum(r[3] for r in rows)))
        return sorted(rows, key=lambda r: (r[0], r[1] or "", r[2] or ""))

    def label_summary(self) -> dict[str, Any]:
        """Segments per source, and annotation segments per split and per split and
        class (``usesearch info``)."""
        by_source: dict[str, int] = {}
        by_split: dict[str, int] = {}
        by_category: dict[str, dict[str, int]] = {}
        for source, split, category, n in self.label_counts():
            by_source[source] = by_source.get(source, 0) + n
            if source == ANNOTATION:
                by_split[split or ""] = by_split.get(split or "", 0) + n
                by_category.setdefault(split or "", {})[category or ""] = n
        unfinished = [f"split {split!r} from {coco_file}" for split, coco_file in self.unfinished_passes()]
        return {
            "segments_by_source": by_source,
            "annotations_by_split": by_split,
            "splits_unfinished": unfinished,
            "annotations_by_class": by_category,
        }

    def annotation_problems(self, split: str | None = None) -> list[AnnotationProblem]:
        """The labelled dataset's recorded problems (of one split, or all), in the
        order they were met; none in an index made before they were recorded."""
        if AnnotationProblem.__tablename__ not in inspect(self.engine).get_table_names():
            return []
        query = select(AnnotationProblem).order_by(AnnotationProblem.id)
        if split is not None:
            query = query.where(AnnotationProblem.split == split)
        with self.sessions() as s:
            return list(s.scalars(query))

    def unfinished_passes(self) -> list[tuple[str, str]]:
        """(split, COCO file) of each pass begun and not finished (``LabelledPass``)."""
        if LabelledPass.__tablename__ not in inspect(self.engine).get_table_names():
            return []
        with self.sessions() as s:
            rows = s.execute(select(LabelledPass.split, LabelledPass.coco_file).order_by(LabelledPass.split))
            return [(split, coco_file) for split, coco_file in rows]

    def split_files(self, split: str) -> set[str]:
        """The COCO files ``split`` was indexed from (none before the table existed)."""
        if LabelledFile.__tablename__ not in inspect(self.engine).get_table_names():
            return set()
        with self.sessions() as s:
            return set(s.scalars(select(LabelledFile.coco_file).where(LabelledFile.split == split)))

    def annotation_photos(self, split: str) -> dict[int, bytes]:
        """Annotation id -> the photo (its path bytes) holding it, for one split."""
        seg, image = SegmentRecord, ImageRecord
        query = (
            select(seg.annotation_id, image.fs_path)
            .join(image, image.id == seg.image_id)
            .where(seg.source == ANNOTATION, seg.split == split, seg.annotation_id.is_not(None))
        )
        with self.sessions() as s:
            return {annotation: bytes(fs_path) for annotation, fs_path in s.execute(query) if annotation is not None}


def _columns():
    seg = SegmentRecord
    return select(
        seg.id,
        seg.image_id,
        seg.vec_chunk,
        seg.vec_row,
        seg.area,
        seg.x,
        seg.y,
        seg.w,
        seg.h,
        seg.annotation_id,
        seg.category,
        seg.split,
        seg.iscrowd,
    )
