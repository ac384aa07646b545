"""A labelled dataset's photo against what the index holds, for ``index_coco`` and
``index_coco_ray`` alike: the entries located on disk, each photo's plan (its
annotations of a split to embed, drop or relabel, from its stored ones), the plan's
commit in one transaction, and the end of a whole pass (annotations the file no
longer has go). The faults found are recorded with one line each (``record``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from usesearch.errors import AnnotationError, UsesearchError, first_few
from usesearch.io.coco_dataset import (
    AMBIGUOUS_PHOTO,
    DUPLICATE_ID,
    DUPLICATE_PHOTO,
    PHOTO_MISSING,
    Annotation,
    CocoDataset,
    ImageEntry,
    Problem,
)
from usesearch.io.coco_masks import masks_of
from usesearch.io.coco_photos import photo_paths
from usesearch.io.files import Found, display_path
from usesearch.masks.proposals import Proposal
from usesearch.reports import counted

from .compute import segment_records
from .options import IndexOptions, IndexReport
from .records import DONE, FAILED, ImageRecord
from .writer import Writer


@dataclass
class CocoReport(IndexReport):
    """An ``IndexReport`` (``segments``: annotations added) with the split and the
    dataset's problems, one line each."""

    split: str = ""
    problems: list[str] = field(default_factory=list)
    relabelled: int = 0  # annotations whose class or crowd flag changed in the file, set in place
    removed: int = 0  # annotation segments the file no longer has (or whose mask is broken now)
    redrawn: int = 0  # annotations whose mask the file changed: embedded again (counted in ``segments`` too)
    shared_with: list[str] = field(default_factory=list)  # other files indexed as this split: theirs are kept
    replacing: bool = False  # --replace-split: this file is to be the split's only one
    replaced: list[str] = field(default_factory=list)  # the split's other files, forgotten at the pass's end
    proposals_lost: list[str] = field(default_factory=list)  # photos changed: their masker's segments went
    listed_empty: int = 0  # photos the file lists with no annotation, found (the audit searches them too)
    on_failed: int = 0  # this file's annotations on the photos that failed (``fail_photo``): not brought in


def fail_photo(
    writer: Writer,
    report: CocoReport,
    entry: ImageEntry,
    found: Found,
    sha256: str | None,
    exc,
    file_stat=None,
    pending: int | None = None,
) -> None:
    """``Writer.fail`` for a labelled photo, the file's annotations it leaves out counted
    (``on_failed``: the summary's annotations then add up to the file's): ``pending``,
    those its plan was to embed, where one was made; else all of the entry's, unless the
    photo was indexed before and is kept as it was (its annotations with it)."""
    failed = report.failed
    kept = writer.fail(found.key, found.path, sha256, exc, report, file_stat=file_stat)
    if report.failed > failed:  # (not a file gone since the walk: said, not failed)
        report.on_failed += pending if pending is not None else 0 if kept else len(entry.annotations)


def record(writer: Writer, report: CocoReport, split: str, dataset: CocoDataset, problems: list[Problem]) -> None:
    writer.store.record_problems(split, str(dataset.path), problems)
    for file_name, annotation_id, error in problems:
        where = " ".join(
            part
            for part in (file_name or "", f"annotation {annotation_id}" if annotation_id is not None else "")
            if part
        )
        report.problems.append(f"{where or dataset.path.name}: {error.kind}: {error}")


SPLIT_CHARS = 128  # the catalog's column (PostgreSQL refuses longer; SQLite kept any)


def check_split(split: str) -> str:
    """A split's name as the catalog keeps it and `--split` finds it: not blank, at most
    ``SPLIT_CHARS`` characters, no control character (a file's stem names it by default)."""
    if not split.strip() or len(split) > SPLIT_CHARS or any(ord(c) < 32 for c in split):
        raise UsesearchError(
            f"a split is named by 1 to {SPLIT_CHARS} characters, not blank, no control character; got "
            f"{split[:40]!r}{'...' if len(split) > 40 else ''}: give --split NAME"
        )
    return split


def annotations_of(entry: ImageEntry, shown: int = 5) -> str:
    """An entry's annotations, counted and named by their ids: "2 annotations (ids 7, 9)"."""
    ids = [str(a.id) for a in entry.annotations]
    return f"{counted(len(ids), 'annotation')} ({'id' if len(ids) == 1 else 'ids'} {first_few(ids, shown)})"


def located_entries(
    dataset: CocoDataset, folders: list[str], writer: Writer, report: CocoReport, split: str
) -> tuple[list[tuple[ImageEntry, Found]], list[bytes]]:
    """Each entry with annotations, with its photo under ``folders``; a photo missing is
    recorded as the entry's problem. Entries whose names lead to the same file
    (``sub/x.png`` and ``x.png`` under two folders) become one, as entries naming the
    same file do (``io.coco_dataset``): otherwise each run would undo the other's.
    And the photos of entries with no annotation, found under ``folders``
    (``ListedPhoto``: the audit searches them too)."""
    store = writer.store
    # --replace-split: the others' annotations are not kept (they are forgotten at the end
    # of a whole pass: a run killed before keeps them recorded, and a re-run finishes it).
    report.shared_with = [] if report.replacing else sorted(store.split_files(split) - {str(dataset.path)})
    elsewhere = store.annotation_photos(split) if report.shared_with else {}
    located: dict[bytes, tuple[ImageEntry, Found]] = {}
    listed: list[bytes] = []
    refused = {file_name for file_name, _, _ in dataset.problems}  # (annotations all refused: no negative)
    for entry in dataset.images:
        if not entry.annotations:
            alone = photo_paths(folders, entry.file_name) if entry.file_name not in refused else []
            listed += [Found(display_path(alone[0]), alone[0]).key] if len(alone) == 1 else []
            continue
        paths = photo_paths(folders, entry.file_name)  # (every folder looked in: a name two hold is caught)
        if not paths:
            message = f"no such photo under {', '.join(folders)} ({annotations_of(entry)})"
            record(writer, report, split, dataset, [(entry.file_name, None, AnnotationError(PHOTO_MISSING, message))])
            continue
        if len(paths) > 1:  # which one the annotations were drawn on is not known: none is guessed
            message = (
                f"{len(paths)} photos of that name: {', '.join(display_path(p) for p in paths[:3])}; its "
                f"{annotations_of(entry)} are left as they were: give the folder its file_names "
                "are relative to"
            )
            record(writer, report, split, dataset, [(entry.file_name, None, AnnotationError(AMBIGUOUS_PHOTO, message))])
            continue
        path = paths[0]
        found = Found(display_path(path), path)
        if elsewhere:  # a split shared by files: an id another photo holds is another file's
            clashes = [a for a in entry.annotations if elsewhere.get(a.id, found.key) != found.key]
            for annotation in clashes:
                message = (
                    f"annotation id {annotation.id} is already in split {split!r} on another photo "
                    f"({', '.join(report.shared_with)}): ids must be unique across a split's files; "
                    "not indexed (give this file a --split of its own)"
                )
                record(
                    writer,
                    report,
                    split,
                    dataset,
                    [(entry.file_name, annotation.id, AnnotationError(DUPLICATE_ID, message))],
                )
            entry.annotations = [a for a in entry.annotations if a not in clashes]
            if not entry.annotations:
                continue
        first = located.setdefault(found.key, (entry, found))[0]
        if first is not entry:
            first.annotations += entry.annotations
            message = (
                f"image entries {first.id} and {entry.id} name the same photo: their annotations are indexed together"
            )
            record(writer, report, split, dataset, [(entry.file_name, None, AnnotationError(DUPLICATE_PHOTO, message))])
    listed = [key for key in dict.fromkeys(listed) if key not in located]  # (another entry has its annotations)
    report.listed_empty = len(listed)
    return list(located.values()), listed


def finish_pass(
    writer: Writer,
    report: CocoReport,
    split: str,
    dataset: CocoDataset,
    located: list[tuple[ImageEntry, Found]],
    listed: list[bytes],
) -> None:
    """A whole pass done: the photos the file lists with no annotation (``listed``)
    recorded; where the split is this file's alone, the split's annotations that the
    file no longer has at all go, and so do the copies of one on another photo than the
    one the file names for it now (``located``: a photo renamed or moved with its entry;
    its old record kept them)."""
    if report.replacing:
        report.replaced = writer.store.forget_other_files(split, str(dataset.path))
    writer.store.set_listed(split, str(dataset.path), listed)
    files = writer.store.note_file(split, str(dataset.path))
    if files == {str(dataset.path)}:
        keep = {annotation.id for entry in dataset.images for annotation in entry.annotations}
        removed, _ = writer.apply(lambda: writer.store.drop_annotations_except(split, keep), None, report)
        report.removed += len(removed)

        def placed(ids: set[int]) -> dict[int, bytes]:
            return {a.id: found.key for entry, found in located for a in entry.annotations if a.id in ids}

        stale, _ = writer.apply(lambda: (writer.store.drop_annotation_twins(split, placed), []), None, report)
        report.removed += len(stale)
    else:
        report.shared_with = sorted(files - {str(dataset.path)})


@dataclass
class Plan:
    """One photo's annotations of a split against what the index holds: ``new``
    (annotation, checked mask) to embed, stored segments to ``drop``, (class, crowd
    flag) to set in place by segment (``relabel``), and the faults found."""

    new: list[tuple[Annotation, dict]] = field(default_factory=list)
    drop: list[int] = field(default_factory=list)
    relabel: dict[int, tuple[str, bool]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    redrawn: list[int] = field(default_factory=list)  # of ``drop``: stored segments whose mask the file redrew

    @property
    def empty(self) -> bool:
        return not (self.new or self.drop or self.relabel)


def stored_state(store, key: bytes, sha256: str, split: str) -> tuple[ImageRecord | None, dict, tuple[int, int] | None]:
    """(the photo's record or None, its stored annotations of the split by annotation
    id, its size or None) where the index holds this content, else (record, {}, None).
    A size of None: the photo must be read to be sized."""
    existing = store.image_by_path(key)
    if existing is None or existing.status != DONE or existing.sha256 != sha256:
        return existing, {}, None
    stored = store.stored_annotations(existing.id, split)
    return existing, stored, (existing.height, existing.width) if existing.height and existing.width else None


def stored_state_here(writer: Writer, found: Found, sha256: str, split: str, file_stat: str | None = None):
    """``stored_state`` of the photo at ``found``, after a record of its content whose file
    is gone has followed it there (a photo renamed with its entry: its proposals and
    other splits' annotations move with it, as a masker run's rename does)."""
    state = stored_state(writer.store, found.key, sha256, split)
    if state[0] is None and writer.follow_move(found.key, found.path, sha256, file_stat):
        state = stored_state(writer.store, found.key, sha256, split)
    return state


def unchanged_here(writer: Writer, found: Found, options: IndexOptions) -> tuple[str | None, str | None]:
    """(its stat, its recorded SHA-256 where the file is as when last read whole, else
    None): ``KnownImages.unchanged`` for a labelled photo, a failed one's too unless the
    run retries failures (``failed_as_before``)."""
    return writer.known.unchanged(
        found.key, found.fs_path, proposals=False, failed_too=not options.retry_failed, max_pixels=options.max_pixels
    )


def failed_as_before(existing: ImageRecord | None, read: bool, report: CocoReport) -> bool:
    """A photo that failed in an earlier run, skipped unread (``KnownImages.unchanged``
    with ``failed_too``: its stat as then, the run not retrying failures): counted, as a
    masker run counts it, not read again (each ``--coco`` run read it and failed anew)."""
    if read or existing is None or existing.status != FAILED:
        return False
    report.skipped += 1
    report.failed_before += 1
    return True


def wrong_size(
    writer: Writer,
    report: CocoReport,
    split: str,
    dataset: CocoDataset,
    found: Found,
    existing,
    fault: Problem,
    entry: ImageEntry,
) -> None:
    """The entry's size is not the photo's: recorded, and its annotations of this split
    that an earlier run stored go (a fresh run of the changed file keeps none)."""
    record(writer, report, split, dataset, [fault])
    if existing is None or existing.status != DONE or not (existing.sha256 and existing.height and existing.width):
        return
    store = writer.store
    stored = store.stored_annotations(existing.id, split)
    ours = {a.id for a in entry.annotations} if report.shared_with else stored.keys()  # a shared split: ours alone
    stale = [old.segment_id for annotation_id, old in stored.items() if annotation_id in ours]
    if stale:
        same_sha, same_hw = existing.sha256, (existing.height, existing.width)  # the record stays as it is
        removed, _ = writer.apply(
            lambda: store.save_annotations(found.key, found.path, same_sha, same_hw, [], None, stale), None, report
        )
        report.removed += len(removed)


def plan_photo(entry: ImageEntry, hw: tuple[int, int], stored: dict, keep_absent: bool = False) -> Plan:
    """What bringing the photo's ``stored`` annotations (by annotation id; {} for a
    photo new or changed) up to the entry's takes, its masks checked at size ``hw``.
    ``keep_absent``: the split is shared with other files, so a stored annotation this
    entry lacks may be theirs, and stays."""
    plan, stored = Plan(), dict(stored)
    for annotation, mask in masks_of(entry, *hw):
        old = stored.pop(annotation.id, None)
        if isinstance(mask, AnnotationError):
            plan.problems.append((entry.file_name, annotation.id, mask))
            plan.drop += (
                [old.segment_id] if old is not None else []
            )  # the file's mask is broken now: the stale one goes
        elif old is not None and old.rle_counts == mask["counts"]:
            if (old.category, old.iscrowd) != (annotation.category, annotation.iscrowd):
                plan.relabel[old.segment_id] = (annotation.category, annotation.iscrowd)
        else:
            plan.drop += [old.segment_id] if old is not None else []
            plan.redrawn += [old.segment_id] if old is not None else []
            plan.new.append((annotation, mask))
    if not keep_absent:
        plan.drop += [old.segment_id for old in stored.values()]  # no longer annotated on this photo
    return plan


def embed_new(
    rgb, path: str, new: list[tuple[Annotation, dict]], model, clock, split: str
) -> tuple[list[dict], object]:
    """(segment rows with their annotation's id, class, crowd flag and split, embeddings)."""
    proposals = [Proposal.of_rle(mask) for _, mask in new]
    segments, embeddings = segment_records(rgb, path, proposals, model, None, clock)
    for segment, (annotation, _) in zip(segments, new):
        segment.update(
            annotation_id=annotation.id, category=annotation.category, iscrowd=annotation.iscrowd, split=split
        )
    return segments, embeddings


def commit_photo(
    writer: Writer, found: Found, sha256: str, hw, plan: Plan, segments, embeddings, report, file_stat=None
) -> None:
    """The photo's new segments added, and the plan's drops and relabels, in one transaction."""
    store = writer.store
    removed, _ = writer.apply(
        lambda: store.save_annotations(
            found.key, found.path, sha256, tuple(hw), segments, embeddings, plan.drop, plan.relabel, file_stat
        ),
        embeddings,
        report,
    )
    report.done += 1
    # The split's annotations the file dropped or changed: not a changed photo's proposals,
    # other splits' annotations (``annotations_lost``) or this split's embedded again.
    report.removed += len(set(removed) & (set(plan.drop) - set(plan.redrawn)))
    report.redrawn += len(set(removed) & set(plan.redrawn))
    report.relabelled += len(plan.relabel)
