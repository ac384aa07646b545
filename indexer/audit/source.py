"""What the audit reads from an index: the labelled dataset's annotations (classes,
splits, where their embeddings lie) in id order, the segments of a batch of photos
with their masks, and the photos' content hashes. Plain rows through the store's
engine, streamed in batches: nothing holds every annotation at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, inspect, select

from usesearch.errors import UsesearchError

from ..catalog import index_flags
from ..lookups import SQL_PARAMETERS
from ..records import ANNOTATION, DONE, PROPOSAL, ImageRecord, ListedPhoto, SegmentRecord
from ..store import Store

SEG = SegmentRecord


@dataclass(frozen=True)
class Annotations:
    """A batch of annotations, in id order: arrays of equal length."""

    ids: np.ndarray
    image_ids: np.ndarray
    labels: np.ndarray  # index into the dataset's classes
    splits: np.ndarray  # index into the dataset's splits
    chunks: np.ndarray
    rows: np.ndarray
    last: int  # the last id read (crowd annotations included): where the next batch starts


@dataclass(frozen=True)
class PhotoSegments:
    """The annotations and proposals of a batch of photos, with their masks."""

    ids: np.ndarray
    image_ids: np.ndarray
    is_annotation: np.ndarray
    crowd: np.ndarray
    labels: np.ndarray  # -1 for proposals
    chunks: np.ndarray
    rows: np.ndarray
    areas: np.ndarray
    masks: list[dict]  # COCO RLE, str counts


class DatasetReader:
    """The store's labelled dataset (``AnnotationLookups``), with the reads by photo
    that the audit adds: photos with annotations (and those a split lists with none,
    ``ListedPhoto``) in id order, and all their segments."""

    def __init__(self, store: Store):
        self.store = store
        self.classes: list[str] = store.categories()
        self.splits: list[str] = store.splits()
        self._class = {name: i for i, name in enumerate(self.classes)}
        with store.sessions() as s:
            self.annotations = s.scalar(select(func.count()).where(SEG.source == ANNOTATION)) or 0
            self.proposals = s.scalar(select(func.count()).where(SEG.source == PROPOSAL)) or 0
            # Crowd annotations: one mask over many objects, in no list (said: the counts left them in).
            self.crowd = s.scalar(select(func.count()).where(SEG.source == ANNOTATION, SEG.iscrowd.is_(True))) or 0

            # Per photo: two probes of the (source, image_id) index, not one per annotation.
            def has(source: str):
                return select(SEG.id).where(SEG.image_id == ImageRecord.id, SEG.source == source).exists()

            # Annotated photos no masker run has made proposals of: the lists that compare
            # annotations with proposals (overlooked, badly located) cannot see them. (A
            # photo whose annotations a later file left out is no longer one: counted, it was.)
            unmasked = select(func.count()).where(
                ImageRecord.status == DONE, ImageRecord.proposals_made.is_(False), has(ANNOTATION)
            )
            self.unproposed = s.scalar(unmasked) or 0

            # Annotated photos a masker ran on that got no proposal (random weights, thresholds
            # too strict): the lists that compare with proposals find nothing there either.

            barren = select(func.count()).where(ImageRecord.proposals_made.is_(True), has(ANNOTATION), ~has(PROPOSAL))
            self.unproposed_masked = s.scalar(barren) or 0
            # Photos a split lists with no annotation: indexed (searched for overlooked
            # objects), and not yet indexed by a masker run (nothing to search).
            self.listed = self.listed_unindexed = 0
            self.unfinished = store.unfinished_passes()
            # Their image ids, read once (8 bytes each) and merged with the annotated photos'
            # by ``photo_batches``: a join per batch scanned every image past the last one.
            self.listed_ids = np.zeros(0, np.int64)
            if ListedPhoto.__tablename__ in inspect(store.engine).get_table_names():
                listed = select(ListedPhoto.fs_path).distinct().subquery()
                records = (
                    select(ImageRecord.id)
                    .join(listed, listed.c.fs_path == ImageRecord.fs_path)
                    .where(ImageRecord.status == DONE, ImageRecord.proposals_made.is_(True))
                )
                self.listed_ids = np.unique(np.fromiter(s.scalars(records), np.int64))
                self.listed = len(self.listed_ids)
                self.listed_unindexed = (s.scalar(select(func.count()).select_from(listed)) or 0) - self.listed

    def notes(self, db_dir) -> list[str]:
        """What the lists cannot see, or see besides annotated photos, a line each."""
        masker_run = f"`usesearch index IMAGES --masker NAME {index_flags(db_dir, self.store.url)}` makes them"
        notes = []
        if self.unproposed:
            notes.append(
                f"{self.unproposed} annotated photo(s) have no proposals yet: the overlooked and badly_located "
                f"lists cannot see them ({masker_run})"
            )
        if self.unproposed_masked:
            notes.append(
                f"{self.unproposed_masked} annotated photo(s) got no proposal from the masker: the overlooked and "
                "badly_located lists find nothing there"
            )
        if self.listed:
            notes.append(f"{self.listed} photo(s) listed with no annotation: searched for overlooked objects too")
        if self.listed_unindexed:
            notes.append(
                f"{self.listed_unindexed} photo(s) listed with no annotation have no proposals yet: the overlooked "
                f"list cannot see them ({masker_run})"
            )
        for split, coco_file in self.unfinished:
            notes.append(
                f"split {split!r} holds part of a pass of {coco_file} (an `index --coco` run stopped before its "
                "end): its lists are of that part; the same `index --coco` command finishes it"
            )
        return notes

    def annotation_batches(self, after: int, batch: int, split: str | None = None):
        """``Annotations`` (of one split, or all) with ids past ``after``, in id order;
        crowd annotations left out (one mask over many objects has no single class)."""
        for cols in self.store.annotation_segments(split=split, after=after, batch=batch):
            if tuple(cols.categories) != tuple(self.classes):
                raise UsesearchError("the index's classes changed while it was audited; run the audit again")
            keep = ~cols.iscrowd & (cols.category >= 0)
            yield Annotations(
                cols.id[keep],
                cols.image_id[keep],
                cols.category[keep].astype(np.int64),
                cols.split[keep].astype(np.int64),
                cols.chunk[keep],
                cols.row[keep],
                last=int(cols.id[-1]),
            )

    def photo_batches(self, after: int, batch: int, most_segments: int):
        """(image ids, ``PhotoSegments``) of the photos with annotations (or listed with
        none) past image id ``after``, in id order: ``batch`` photos at a time, fewer where
        their segments pass ``most_segments`` (memory goes with segments: a step of dense
        photos grew by gigabytes), one alone where it has more."""
        while True:
            with self.store.engine.connect() as conn:
                annotated = [i for (i,) in conn.execute(annotated_photos(after, batch))]
                first = int(np.searchsorted(self.listed_ids, after, side="right"))
                listed = self.listed_ids[first : first + batch].tolist()  # (each side's first ``batch``: enough)
                images = sorted(set(annotated).union(listed))[:batch]
                sizes: dict[int, int] = {}
                for start in range(0, len(images), SQL_PARAMETERS):
                    part = images[start : start + SQL_PARAMETERS]
                    count = select(SEG.image_id, func.count()).where(SEG.image_id.in_(part)).group_by(SEG.image_id)
                    sizes.update((image, n) for image, n in conn.execute(count))
            if not images:
                return
            for group in groups_of_most(images, [sizes.get(i, 0) for i in images], most_segments):
                yield np.array(group, np.int64), self.segments_of(group)
            after = images[-1]

    def segments_of(self, image_ids: list[int]) -> PhotoSegments:
        query = (
            select(
                SEG.id,
                SEG.image_id,
                SEG.source,
                SEG.category,
                SEG.iscrowd,
                SEG.vec_chunk,
                SEG.vec_row,
                SEG.rle_counts,
                SEG.area,
                ImageRecord.height,
                ImageRecord.width,
            )
            .join(ImageRecord)
            .where(ImageRecord.status == DONE)
            .order_by(SEG.image_id, SEG.id)
        )
        found: list = []
        with self.store.engine.connect() as conn:
            for start in range(0, len(image_ids), SQL_PARAMETERS):
                found += conn.execute(query.where(SEG.image_id.in_(image_ids[start : start + SQL_PARAMETERS]))).all()
        if not found:
            empty = np.zeros(0, np.int64)
            return PhotoSegments(empty, empty, empty.astype(bool), empty.astype(bool), empty, empty, empty, empty, [])
        ids, images, sources, categories, crowd, chunks, rows, counts, areas, heights, widths = zip(*found)
        annotated = np.array(sources) == ANNOTATION
        labels = np.array([self._class.get(c, -1) for c in categories], np.int64)
        return PhotoSegments(
            np.array(ids, np.int64),
            np.array(images, np.int64),
            annotated,
            np.array([bool(c) for c in crowd], bool),
            np.where(annotated, labels, -1),
            np.array(chunks, np.int64),
            np.array(rows, np.int64),
            np.array(areas, np.float64),
            [{"size": [h, w], "counts": c} for h, w, c in zip(heights, widths, counts)],
        )

    def photo_splits(self, image_ids: Iterable[int]) -> tuple[dict[int, set[str]], dict[int, int]]:
        """Per annotated photo of these: the splits its annotations are in, and how many
        it has (the photos the leaks name, not every annotated photo: 578 MiB of dicts
        at 10^6 photos)."""
        splits: dict[int, set[str]] = {}
        counts: dict[int, int] = {}
        query = select(SEG.image_id, SEG.split, func.count()).where(SEG.source == ANNOTATION)
        wanted = sorted({int(i) for i in image_ids})
        with self.store.engine.connect() as conn:
            for start in range(0, len(wanted), SQL_PARAMETERS):
                part = query.where(SEG.image_id.in_(wanted[start : start + SQL_PARAMETERS]))
                for image_id, split, n in conn.execute(part.group_by(SEG.image_id, SEG.split)):
                    splits.setdefault(image_id, set()).add(split or "")
                    counts[image_id] = counts.get(image_id, 0) + n
        return splits, counts


def groups_of_most(items: list, sizes: list[int], most: int) -> list[list]:
    """``items`` in order, in runs whose ``sizes`` add up to ``most`` at most (an item
    larger than that alone)."""
    groups: list[list] = []
    total = most + 1
    for item, size in zip(items, sizes):
        if total + size > most:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += size
    return groups


def annotated_photos(after: int, batch: int):
    """The next ``batch`` ids of photos with annotations past image id ``after``: a
    range of the (source, image_id) index."""
    return (
        select(SEG.image_id)
        .where(SEG.source == ANNOTATION, SEG.image_id > after)
        .distinct()
        .order_by(SEG.image_id)
        .limit(batch)
    )
