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

from usesearch.io.coco_dataset import (
    CocoDataset,
    ImageEntry,
    as_dataset,
    refuse_when_no_photo,
)
from usesearch.io.coco_masks import size_fault
from usesearch.io.files import Found, decode, read_bytes

from . import read_ahead
from .coco_plan import (
    CocoReport,
    check_split,
    commit_photo,
    embed_new,
    fail_photo,
    failed_as_before,
    finish_pass,
    located_entries,
    plan_photo,
    record,
    stored_state_here,
    unchanged_here,
    wrong_size,
)
from .folder import check_paths, is_new
from .index_checks import as_built
from .known_images import file_stat
from .options import IndexOptions, IndexReport
from .pipeline import check_devices, identity, load_embedder
from .writer import Writer


def index_coco(
    paths: list[str | os.PathLike],
    coco_file: str | os.PathLike | CocoDataset,
    db_dir: str | os.PathLike,
    options: IndexOptions | None = None,
    split: str | None = None,
    progress: Callable[[IndexReport, str, int], None] | None = None,
    replace_split: bool = False,
) -> CocoReport:
    """Index the annotations of ``coco_file`` (photos named by ``images[].file_name``
    under ``paths``: a name two of them hold is a problem) into ``db_dir`` as split
    ``split`` (default: the file's stem). A file that is not COCO is refused first.
    ``replace_split``: this file becomes the split's only one (the annotations of the
    split's other files go)."""
    options = options or IndexOptions()
    dataset = as_dataset(coco_file)  # before anything: a wrong file must not leave an index folder behind
    split = check_split(dataset.path.stem if split is None else split)
    db_dir = check_paths(paths, db_dir)
    refuse_when_no_photo(dataset, [os.fspath(p) for p in paths], new_index=is_new(db_dir, options))
    options = as_built(db_dir, options)
    report = CocoReport(devices=check_devices(options), split=split)
    start = time.perf_counter()
    model = load_embedder(options)
    folders = [os.fspath(p) for p in paths]
    with Writer(db_dir, options, identity(model, None, options), paths, model) as writer:
        report.annotations_lost = writer.store.annotations_lost
        report.proposals_lost = writer.store.proposals_lost
        report.moved = writer.moved
        report.replacing = replace_split  # the others forgotten once the pass is whole (finish_pass)
        writer.store.forget_problems(split, str(dataset.path))  # recorded afresh below: listed once
        writer.store.begin_pass(split, str(dataset.path))  # ended by a whole pass (``finish_pass``)
        record(writer, report, split, dataset, dataset.problems)
        steps = _photos(dataset, folders, writer, model, options, report, split)
        total = len(dataset.images)
        writer.run(steps, report, lambda path: progress and progress(report, path, total))
    report.seconds = time.perf_counter() - start
    return report


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

    def read(job: tuple[ImageEntry, Found]) -> tuple[bytes | None, str, str | None]:
        """(bytes, SHA-256, stat before the read); no bytes where the file is as it was
        when last read whole (``KnownImages.unchanged``: its recorded SHA-256 then)."""
        found = job[1]
        stat, recorded = unchanged_here(writer, found, options)
        if recorded is not None:
            return None, recorded, stat
        return (*read_bytes(found.fs_path, options.max_bytes, found.path), stat)

    pool = ThreadPoolExecutor(1, thread_name_prefix="usesearch-read")
    try:
        jobs, listed = located_entries(dataset, folders, writer, report, split)
        prefetched = writer.known.prefetching(jobs, lambda job: job[1].key)
        for (entry, found), future in read_ahead.ordered_map(pool, read, prefetched, ahead=4):
            try:
                (data, sha256, stat), _ = future.result()
            except Exception as exc:  # noqa: BLE001 - any per-photo failure is recorded and the run goes on
                fail_photo(writer, report, entry, found, None, exc)
                yield entry.file_name
                continue
            finally:
                writer.known.forget(found.key)  # (read ahead for ``read``; the records are not kept)
            _index_photo(entry, found, data, sha256, stat, writer, model, options, report, split, dataset)
            yield entry.file_name
    finally:  # also on Ctrl-C: queued reads are dropped, not finished
        pool.shutdown(wait=True, cancel_futures=True)
    finish_pass(writer, report, split, dataset, jobs, listed)


def _index_photo(
    entry: ImageEntry,
    found: Found,
    data: bytes | None,
    sha256: str,
    stat: str | None,
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
    photo whose stored content is the same is not decoded unless a mask is new, nor
    read where its stat is the one recorded (``data`` None: ``sha256`` is the
    record's) unless it must be decoded. ``stat``: the file's, taken before the read."""
    existing, stored, hw = stored_state_here(writer, found, sha256, split, stat)
    if failed_as_before(existing, data is not None, report):
        return
    again = (entry, found, writer, model, options, report, split, dataset)
    if data is None and hw is None:  # a record without its size: the photo is read to be sized
        _read_then_index(*again)
        return
    rgb = None
    if hw is None:
        assert data is not None  # (read above where it was skipped unread)
        try:
            rgb = decode(data, found.path, options.max_pixels)
        except Exception as exc:  # noqa: BLE001 - any per-photo failure is recorded and the run goes on
            fail_photo(writer, report, entry, found, sha256, exc, stat)  # (skipped as it is)
            return
        hw = rgb.shape[:2]
    fault = size_fault(entry, hw)
    if fault is not None:
        wrong_size(writer, report, split, dataset, found, existing, fault, entry)
        return
    plan = plan_photo(entry, hw, stored, keep_absent=bool(report.shared_with))
    if data is None and plan.new:  # skipped unread, but a mask is new: its pixels are needed after all
        _read_then_index(*again)
        return
    record(writer, report, split, dataset, plan.problems)
    if plan.empty:
        report.skipped += 1
        if data is not None:
            writer.known.read_as_recorded(existing, sha256, stat)
        return
    segments: list[dict] = []
    embeddings = None
    if plan.new:
        assert data is not None  # (read above where it was skipped unread)
        try:
            rgb = rgb if rgb is not None else decode(data, found.path, options.max_pixels)
            segments, embeddings = embed_new(rgb, found.path, plan.new, model, report, split)
        except Exception as exc:  # noqa: BLE001 - as an indexer's per-photo failure
            fail_photo(writer, report, entry, found, sha256, exc, stat, len(plan.new))  # (skipped as it is)
            return
    commit_photo(writer, found, sha256, hw, plan, segments, embeddings, report, file_stat=stat)


def _read_then_index(entry, found, writer, model, options, report, split, dataset) -> None:
    """``_index_photo`` of a photo skipped unread that must be read after all: its bytes,
    taken for the content they are now (the recorded one, unless it changed under a stat
    that looked the same), with its stat taken before this read."""
    stat = file_stat(found.fs_path)
    try:
        data, sha256 = read_bytes(found.fs_path, options.max_bytes, found.path)
    except Exception as exc:  # noqa: BLE001 - any per-photo failure is recorded and the run goes on
        fail_photo(writer, report, entry, found, None, exc)
        return
    _index_photo(entry, found, data, sha256, stat, writer, model, options, report, split, dataset)
