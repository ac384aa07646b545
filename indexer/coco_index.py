"""``index_coco``: a labelled dataset indexed by its own masks. Each annotation of a
COCO file becomes a segment (source ``annotation``) with its id, class name,
``iscrowd`` and split, embedded by the same model and pooling as a masker's
proposals (``compute.segment_records``); several files (train, val) go into one
index, beside the proposals a masker run makes of the same photos.

Like ``index_paths``: one transaction per photo, safe to kill and to re-run (an
annotation of a split already stored for the photo's content is not embedded
again), and the dataset's faults are recorded with one line each
(``AnnotationProblem``, shown by ``usesearch failures``) while the rest is indexed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from usesearch.errors import AnnotationError
from usesearch.io.files import Found, decode, display_path, read_bytes
from usesearch.masks import rle
from usesearch.masks.maskers import Proposal

from . import read_ahead
from .coco_source import (
    PHOTO_MISSING,
    SIZE_MISMATCH,
    Annotation,
    CocoDataset,
    ImageEntry,
    masks_of,
    photo_path,
    read_coco,
)
from .compute import segment_records
from .options import IndexOptions, IndexReport
from .pipeline import check_devices, check_paths, identity, load_embedder
from .records import DONE
from .writer import Writer

Problem = tuple[str | None, int | None, AnnotationError]


@dataclass
class CocoReport(IndexReport):
    """An ``IndexReport`` (``segments``: annotations added) with the split and the
    dataset's problems, one line each."""

    split: str = ""
    problems: list[str] = field(default_factory=list)
    relabelled: int = 0  # annotations whose class or crowd flag changed in the file, set in place
    removed: int = 0  # annotation segments the file no longer has (or whose mask changed)
    shared_with: list[str] = field(default_factory=list)  # other files indexed as this split: theirs are kept


def index_coco(
    paths: list[str | os.PathLike],
    coco_file: str | os.PathLike,
    db_dir: str | os.PathLike,
    options: IndexOptions | None = None,
    split: str | None = None,
    progress: Callable[[IndexReport, str, int], None] | None = None,
) -> CocoReport:
    """Index the annotations of ``coco_file`` (photos named by ``images[].file_name``
    under the first of ``paths`` that has them) into ``db_dir`` as split ``split``
    (default: the file's stem). A file that is not COCO is refused first."""
    options = options or IndexOptions()
    dataset = read_coco(coco_file)  # before anything: a wrong file must not leave an index folder behind
    split = split or Path(coco_file).stem
    db_dir = check_paths(paths, db_dir)
    report = CocoReport(devices=check_devices(options), split=split)
    start = time.perf_counter()
    model = load_embedder(options)
    folders = [os.fspath(p) for p in paths]
    with Writer(db_dir, options, identity(model, None, options), paths, model) as writer:
        writer.store.forget_problems(split)  # recorded afresh below: a re-run lists each once
        _record(writer, report, split, dataset, dataset.problems)
        steps = _photos(dataset, folders, writer, model, options, report, split)
        total = len(dataset.images)
        writer.run(steps, report, lambda path: progress and progress(report, path, total))
    report.seconds = time.perf_counter() - start
    return report


def _record(writer: Writer, report: CocoReport, split: str, dataset: CocoDataset, problems: list[Problem]) -> None:
    writer.store.record_problems(split, str(dataset.path), problems)
    for file_name, annotation_id, error in problems:
        where = " ".join(
            part
            for part in (file_name or "", f"annotation {annotation_id}" if annotation_id is not None else "")
            if part
        )
        report.problems.append(f"{where or dataset.path.name}: {error.kind}: {error}")


def _photos(
    dataset: CocoDataset,
    folders: list[str],
    writer: Writer,
    model,
    options: IndexOptions,
    report: CocoReport,
    split: str,
) -> Iterator[str]:
    """Each image entry's annotations committed (or its faults recorded), yielding its
    file name for progress; photos are read and hashed a few ahead in a thread."""

    def found_entries() -> Iterator[tuple[ImageEntry, Found]]:
        for entry in dataset.images:
            if not entry.annotations:
                continue
            path = photo_path(folders, entry.file_name)
            if path is None:
                message = f"no such photo under {', '.join(folders)} ({len(entry.annotations)} annotations)"
                _record(
                    writer, report, split, dataset, [(entry.file_name, None, AnnotationError(PHOTO_MISSING, message))]
                )
                continue
            yield entry, Found(display_path(path), path)

    def read(job: tuple[ImageEntry, Found]) -> tuple[bytes, str]:
        found = job[1]
        return read_bytes(found.fs_path, options.max_bytes, found.path)

    pool = ThreadPoolExecutor(1, thread_name_prefix="usesearch-read")
    try:
        for (entry, found), future in read_ahead.ordered_map(pool, read, found_entries(), ahead=4):
            try:
                (data, sha256), _ = future.result()
            except Exception as exc:  # noqa: BLE001 - any per-photo failure is recorded and the run goes on
                writer.fail(found.key, found.path, None, exc, report)
                yield entry.file_name
                continue
            _index_photo(entry, found, data, sha256, writer, model, options, report, split, dataset)
            yield entry.file_name
    finally:  # also on Ctrl-C: queued reads are dropped, not finished
        pool.shutdown(wait=True, cancel_futures=True)
    # A whole pass done: the split's annotations that the file no longer has at all go,
    # where the split is this file's alone.
    files = writer.store.note_file(split, str(dataset.path))
    if files == {str(dataset.path)}:
        keep = {annotation.id for entry in dataset.images for annotation in entry.annotations}
        removed, _ = writer.apply(lambda: writer.store.drop_annotations_except(split, keep), None, report)
        report.removed += len(removed)
    else:
        report.shared_with = sorted(files - {str(dataset.path)})


def _index_photo(
    entry: ImageEntry,
    found: Found,
    data: bytes,
    sha256: str,
    writer: Writer,
    model,
    options: IndexOptions,
    report: CocoReport,
    split: str,
    dataset: CocoDataset,
) -> None:
    """One photo's annotations of this split brought up to the file, in one
    transaction: new ones (and those whose mask changed) embedded, a changed class or
    crowd flag set in place, those the file no longer has on this photo removed. A
    photo whose stored content is the same is not decoded unless a mask is new."""
    store = writer.store
    existing = store.image_by_path(found.key)
    same = existing is not None and existing.status == DONE and existing.sha256 == sha256
    rgb = None
    if existing is not None and same and existing.height and existing.width:
        height, width = existing.height, existing.width
    else:
        try:
            rgb = decode(data, found.path, options.max_pixels)
        except Exception as exc:  # noqa: BLE001 - any per-photo failure is recorded and the run goes on
            writer.fail(found.key, found.path, sha256, exc, report)
            return
        height, width = rgb.shape[:2]
    if entry.height is not None and (entry.height, entry.width) != (height, width):
        message = f"the entry says {entry.width}x{entry.height} but the photo is {width}x{height}"
        _record(writer, report, split, dataset, [(entry.file_name, None, AnnotationError(SIZE_MISMATCH, message))])
        if existing is not None and existing.status == DONE and existing.sha256 and existing.height and existing.width:
            # Its annotations of this split, stored by an earlier run, go: a fresh run keeps none either.
            stale = [old.segment_id for old in store.stored_annotations(existing.id, split).values()]
            if stale:
                same_sha, same_hw = existing.sha256, (existing.height, existing.width)  # the record stays as it is
                removed, _ = writer.apply(
                    lambda: store.save_annotations(found.key, found.path, same_sha, same_hw, [], None, stale),
                    None,
                    report,
                )
                report.removed += len(removed)
        return
    stored = store.stored_annotations(existing.id, split) if existing is not None and same else {}
    problems: list[Problem] = []
    new: list[tuple[Annotation, dict]] = []
    drop: list[int] = []
    relabel: dict[int, tuple[str, bool]] = {}
    for annotation, mask in masks_of(entry, height, width):
        old = stored.pop(annotation.id, None)
        if isinstance(mask, AnnotationError):
            problems.append((entry.file_name, annotation.id, mask))
            drop += [old.segment_id] if old is not None else []  # the file's mask is broken now: the stale one goes
        elif old is not None and old.rle_counts == mask["counts"]:
            if (old.category, old.iscrowd) != (annotation.category, annotation.iscrowd):
                relabel[old.segment_id] = (annotation.category, annotation.iscrowd)
        else:
            drop += [old.segment_id] if old is not None else []
            new.append((annotation, mask))
    drop += [old.segment_id for old in stored.values()]  # no longer annotated on this photo
    _record(writer, report, split, dataset, problems)
    if not (new or drop or relabel):
        report.skipped += 1
        return
    segments: list[dict] = []
    embeddings = None
    if new:
        proposals = [Proposal(rle=mask, bbox=_bbox(mask), area=rle.area(mask)) for _, mask in new]
        try:
            rgb = rgb if rgb is not None else decode(data, found.path, options.max_pixels)
            segments, embeddings = segment_records(rgb, found.path, proposals, model, None, report)
        except Exception as exc:  # noqa: BLE001 - as an indexer's per-photo failure
            writer.fail(found.key, found.path, sha256, exc, report)
            return
        for segment, (annotation, _) in zip(segments, new):
            segment.update(
                annotation_id=annotation.id, category=annotation.category, iscrowd=annotation.iscrowd, split=split
            )
    hw = (height, width)
    removed, _ = writer.apply(
        lambda: store.save_annotations(found.key, found.path, sha256, hw, segments, embeddings, drop, relabel),
        embeddings,
        report,
    )
    report.done += 1
    report.removed += len(removed)
    report.relabelled += len(relabel)


def _bbox(mask: dict) -> tuple[int, int, int, int]:
    x, y, w, h = rle.bbox(mask)
    return x, y, w, h
