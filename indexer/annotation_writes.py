"""The store's writes for a labelled dataset indexed by its own masks: a photo's
annotations added beside its proposals (its proposals replaced beside its
annotations is ``image_writes.replace_proposals``), one transaction per photo, and
the dataset's recorded problems. A part of ``Store`` (its base class), like ``annotation_lookups.py``."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from usesearch.errors import AnnotationError

from .embeddings import EmbeddingFiles
from .image_writes import add_segments, annotations_by_split
from .lookups import SQL_PARAMETERS
from .records import (
    ANNOTATION,
    DONE,
    AnnotationProblem,
    ImageRecord,
    IndexInfo,
    LabelledFile,
    LabelledPass,
    ListedPhoto,
    SegmentRecord,
)


@dataclass(frozen=True)
class StoredAnnotation:
    """What a re-run compares an annotation of the file with."""

    segment_id: int
    category: str | None
    iscrowd: bool
    rle_counts: str


class AnnotationWrites:
    """Writes of annotation segments and problems, by a ``Store``'s sessions."""

    sessions: sessionmaker[Session]
    files: Callable[[], EmbeddingFiles]
    retrying: Callable[[Callable[[], Any]], Any]
    annotations_lost: Counter[str]  # (see ImageWrites)
    proposals_lost: list[str]  # photos whose content changed under a labelled run: their proposals went with it

    def stored_annotations(self, image_id: int, split: str) -> dict[int, StoredAnnotation]:
        """A photo's annotations of one split as stored, by annotation id."""
        seg = SegmentRecord
        query = select(seg.annotation_id, seg.id, seg.category, seg.iscrowd, seg.rle_counts).where(
            seg.image_id == image_id, seg.source == ANNOTATION, seg.split == split
        )
        with self.sessions() as s:
            rows = s.execute(query)
            return {a: StoredAnnotation(i, c, bool(crowd), counts) for a, i, c, crowd, counts in rows if a is not None}

    def save_annotations(
        self,
        fs_path: bytes,
        path: str,
        sha256: str,
        hw: tuple[int, int],
        segments: Iterable[dict[str, Any]],
        vectors: np.ndarray | None,
        drop: Iterable[int] = (),
        relabel: Mapping[int, tuple[str, bool]] | None = None,
        file_stat: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """A photo's annotation segments brought up to its COCO file, in one
        transaction: ``segments`` added (their ``vectors`` written to the embedding
        files first), the annotation segments ``drop`` removed, and ``relabel``'s
        given a new (class, iscrowd) in place. A photo the index holds with the same
        content keeps its other segments (its proposals, its annotations of other
        splits); one it lacks, failed on, or holds with other content is (re)made with
        these alone, and a masker run still owes it its proposals. ``file_stat``: the
        file's stat as it was read whole, for a re-run to skip it unread. Returns (segment
        ids removed, segment ids added)."""
        segments = list(segments)
        if segments:
            segments = self.files().place(segments, vectors)
        dropped, relabelled = sorted(set(drop)), dict(relabel or {})
        removed, added, lost, proposals = self.retrying(
            lambda: self._save_annotations(fs_path, path, sha256, hw, segments, dropped, relabelled, file_stat)
        )
        self.annotations_lost.update(lost)
        if proposals:
            self.proposals_lost.append(path)
        return removed, added

    def _save_annotations(
        self, fs_path, path, sha256, hw, segments, drop, relabel, file_stat
    ) -> tuple[list[int], list[int], Counter[str], int]:
        seg = SegmentRecord
        with self.sessions.begin() as s:
            record = s.scalar(select(ImageRecord).where(ImageRecord.fs_path == fs_path))
            removed: list[int] = []
            lost: Counter[str] = Counter()
            proposals = 0  # a masker's segments of the old content: they go with it (the record owes them again)
            if record is not None and (record.status != DONE or record.sha256 != sha256):
                lost = annotations_by_split(s, record.id)
                rows = s.execute(select(seg.id, seg.source).where(seg.image_id == record.id)).all()
                removed = [segment_id for segment_id, _ in rows]
                proposals = sum(source != ANNOTATION for _, source in rows)
                s.delete(record)
                s.flush()
                record = None
            if record is None:
                record = ImageRecord(
                    fs_path=fs_path,
                    path=path,
                    sha256=sha256,
                    height=hw[0],
                    width=hw[1],
                    status=DONE,
                    proposals_made=False,
                )
                s.add(record)
                s.flush()
            else:
                record.error_class = record.error_message = None  # its content read whole again
                mine = (seg.image_id == record.id) & (seg.source == ANNOTATION)
                for start in range(0, len(drop), SQL_PARAMETERS):
                    ids = drop[start : start + SQL_PARAMETERS]
                    removed += list(s.scalars(select(seg.id).where(mine, seg.id.in_(ids))))
                    s.execute(delete(seg).where(mine, seg.id.in_(ids)).execution_options(synchronize_session=False))
                for segment_id, (category, iscrowd) in relabel.items():
                    s.execute(update(seg).where(mine, seg.id == segment_id).values(category=category, iscrowd=iscrowd))
            if file_stat is not None:
                record.file_stat = file_stat
            added = add_segments(s, record.id, segments, source=ANNOTATION)
            s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
            return removed, added, lost, proposals

    def drop_annotations_except(self, split: str, keep: set[int]) -> tuple[list[int], list[int]]:
        """Remove the split's annotation segments whose annotation id is not in
        ``keep`` (the ids its COCO file now has), in one transaction. Returns
        (segment ids removed, [])."""
        seg = SegmentRecord

        def drop() -> tuple[list[int], list[int]]:
            with self.sessions.begin() as s:
                query = select(seg.id, seg.annotation_id).where(seg.source == ANNOTATION, seg.split == split)
                gone = [i for i, annotation_id in s.execute(query) if annotation_id not in keep]
                _delete_annotation_segments(s, gone)
                return gone, []

        result: tuple[list[int], list[int]] = self.retrying(drop)
        return result

    def drop_annotation_twins(self, split: str, placed: Callable[[set[int]], dict[int, bytes]]) -> list[int]:
        """An annotation id the split holds on two photos or more, though its file names
        one (a photo renamed or moved with its entry: the old record kept its copy): the
        copies on other photos than ``placed`` says (annotation ids -> the photo's path
        bytes, asked for those ids only), removed in one transaction. Returns their ids."""
        seg = SegmentRecord

        def drop() -> list[int]:
            with self.sessions.begin() as s:
                mine = (seg.source == ANNOTATION) & (seg.split == split)
                twins = select(seg.annotation_id).where(mine).group_by(seg.annotation_id).having(func.count() > 1)
                rows = s.execute(
                    select(seg.id, seg.annotation_id, ImageRecord.fs_path)
                    .join(ImageRecord)
                    .where(mine, seg.annotation_id.in_(twins))
                ).all()
                where = placed({a for _, a, _ in rows if a is not None}) if rows else {}
                gone = [i for i, a, key in rows if a in where and key != where[a]]
                _delete_annotation_segments(s, gone)
                return gone

        result: list[int] = self.retrying(drop)
        return result

    def record_problems(
        self, split: str, coco_file: str, problems: Iterable[tuple[str | None, int | None, AnnotationError]]
    ) -> None:
        """Record a labelled dataset's problems (file name, annotation id, the error)."""
        rows = [
            dict(
                split=split,
                coco_file=coco_file,
                file_name=file_name,
                annotation_id=annotation_id,
                kind=error.kind,
                message=str(error)[:2000],
            )
            for file_name, annotation_id, error in problems
        ]
        if rows:
            self.retrying(lambda: self._add_problems(rows))

    def _add_problems(self, rows: list[dict]) -> None:
        with self.sessions.begin() as s:
            s.execute(insert(AnnotationProblem), rows)

    def forget_problems(self, split: str, coco_file: str) -> None:
        """The problems ``coco_file`` gave ``split`` go before it is indexed again, which
        records them afresh (another file indexed into the same split keeps its own)."""

        def forget() -> None:
            with self.sessions.begin() as s:
                gone = (AnnotationProblem.split == split) & (AnnotationProblem.coco_file == coco_file)
                s.execute(delete(AnnotationProblem).where(gone))

        self.retrying(forget)

    def forget_other_files(self, split: str, coco_file: str) -> list[str]:
        """``--replace-split``: the split's files other than ``coco_file`` forgotten, with
        their problems, so that its pass removes the annotations it lacks (theirs too).
        Returns them."""

        def forget() -> list[str]:
            with self.sessions.begin() as s:
                mine = (LabelledFile.split == split) & (LabelledFile.coco_file != coco_file)
                others = sorted(set(s.scalars(select(LabelledFile.coco_file).where(mine))))
                s.execute(delete(LabelledFile).where(mine))
                theirs = (AnnotationProblem.split == split) & AnnotationProblem.coco_file.in_(others)
                s.execute(delete(AnnotationProblem).where(theirs))
                for table in (ListedPhoto, LabelledPass):  # (their annotations go with this pass)
                    s.execute(delete(table).where((table.split == split) & table.coco_file.in_(others)))
                return others

        others: list[str] = self.retrying(forget)
        return others

    def begin_pass(self, split: str, coco_file: str) -> None:
        """A pass of ``coco_file`` over ``split`` begun (``LabelledPass``): ``note_file`` ends it."""

        def begin() -> None:
            with self.sessions.begin() as s:
                s.merge(LabelledPass(split=split, coco_file=coco_file, started=dt.datetime.now(dt.timezone.utc)))

        self.retrying(begin)

    def note_file(self, split: str, coco_file: str) -> set[str]:
        """Record that ``split`` is indexed from ``coco_file`` (a whole pass of it done);
        every file it was indexed from. Where it is the split's only one, what other files
        left there (a pass begun and never finished, their listed photos) goes: the pass
        that follows removes their annotations."""

        def note() -> set[str]:
            with self.sessions.begin() as s:
                s.merge(LabelledFile(split=split, coco_file=coco_file, indexed=dt.datetime.now(dt.timezone.utc)))
                s.execute(delete(LabelledPass).where(LabelledPass.split == split, LabelledPass.coco_file == coco_file))
                files = set(s.scalars(select(LabelledFile.coco_file).where(LabelledFile.split == split)))
                if files == {coco_file}:
                    for table in (LabelledPass, ListedPhoto):
                        s.execute(delete(table).where(table.split == split, table.coco_file != coco_file))
                return files

        files: set[str] = self.retrying(note)
        return files

    def set_listed(self, split: str, coco_file: str, keys: Iterable[bytes]) -> None:
        """The photos ``coco_file`` lists for ``split`` with no annotation (``ListedPhoto``),
        set afresh; a change moves the index's generation on (an audit's lists hold them)."""
        keys = set(keys)

        def write() -> None:
            with self.sessions.begin() as s:
                mine = (ListedPhoto.split == split) & (ListedPhoto.coco_file == coco_file)
                if set(map(bytes, s.scalars(select(ListedPhoto.fs_path).where(mine)))) == keys:
                    return
                s.execute(delete(ListedPhoto).where(mine))
                if keys:
                    rows = [{"split": split, "coco_file": coco_file, "fs_path": key} for key in sorted(keys)]
                    s.execute(insert(ListedPhoto), rows)
                s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))

        self.retrying(write)

    def set_masker(self, masker: str, params: dict) -> None:
        """The masker of an index that held only annotations: its first masker run's."""
        with self.sessions.begin() as s:
            s.execute(update(IndexInfo).values(masker=masker, masker_params=params))


def _delete_annotation_segments(s, ids: list[int]) -> None:
    """Delete these segments in the session's transaction (the index's generation moves on)."""
    for start in range(0, len(ids), SQL_PARAMETERS):
        part = ids[start : start + SQL_PARAMETERS]
        s.execute(delete(SegmentRecord).where(SegmentRecord.id.in_(part)).execution_options(synchronize_session=False))
    if ids:
        s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
