"""Maintenance of an index folder: the writes that are not indexing.

``reindex`` rebuilds the FAISS files from the stored embeddings (another factory or
shard size, or the one the collection's size now calls for); ``recalibrate``
measures a compressed index's recall again and chooses its search effort.

``prune``: images whose files are gone (or can no longer be read) since they were
indexed leave the index, with their segments and vectors; then the embedding files
give back the disk of removed segments (``compact``), and the fragments Ray runs cut
short left (``fragments.remove_all``). Each removal is one
transaction, like each add, and the FAISS file is reconciled with the committed
segments whenever an index opens, so a kill at any moment leaves a consistent index
and a re-run finishes the job.

``compact``: the embedding files are append-only (a reader never sees a row change
under it), so the rows of removed segments (pruned photos, photos indexed again
after a change, the torn tail of a killed run) stay where they are. ``compact``
copies the live rows of every closed chunk that is at least ``DEAD_SHARE`` dead to
the end of the files, points their segments at the copies, batch by batch in
committed transactions, and deletes a chunk file only once no committed segment
refers to it. A kill at any moment leaves each segment pointing at a complete row
(the old or the copy); the copies a kill left unreferenced are dead rows a later run
reclaims, and a chunk left unreferenced is deleted by it. Segment ids do not change,
so the FAISS index is untouched. Searches running in other processes see the move
as a commit (the store's generation), which drops their cached locations; a chunk
they have mapped stays readable until they unmap it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update

from usesearch.errors import EverythingGoneError, UsesearchError
from usesearch.io.files import display_path
from usesearch.reports import RunReport

from . import calibration, faiss_gpu, fragments, index_choice, index_kinds, vector_files, vectors
from .calibrating import calibrate_index, kept_for_later
from .folder import FAISS_FILE, check_index_at, check_writable, index_flags, open_store, scope_args, writer_lock
from .leftovers import copies_holding, failure_sets, gone_images, images_under, live_rows, named, stale_copies
from .options import IndexOptions, check_shard_count, check_shard_size
from .records import IndexInfo, SegmentRecord
from .store import Store
from .writer import Writer


# -- reindex -----------------------------------------------------------------------------
@dataclass
class Reindexed:
    """What ``reindex`` built: the vectors in its new FAISS index, and the calibration a
    compressed one was given (None for an exact index or a graph: nothing to tune)."""

    vectors: int
    calibration: calibration.Calibration | None = None
    calibration_note: str | None = None  # a target or budget asked of it, kept for later (``kept_for_later``)


def reindex(
    db_dir: str | os.PathLike,
    factory: str | None = None,
    db_url: str | None = None,
    faiss_device: str | None = None,
    shard_size: int | None = None,
    build: Callable[[Store, int, str, str | None, int], vectors.Vectors] | None = None,
    recall_target: float | None = None,
    text_queries: bool = True,
    queries: Mapping[str, np.ndarray] | None = None,
    latency_budget_ms: float | None = None,
) -> Reindexed:
    """Rebuild the FAISS file from the stored embeddings, optionally with another
    factory (``"auto"``: the one the collection's size calls for, then as it grows) or
    another shard size (segments per shard; 0: one shard). ``build``:
    how the index is filled (``vectors.rebuild``, or ``distributed.rebuild_on_ray``
    to fill the shards in parallel on Ray). A compressed index is then calibrated
    (``calibration``) for ``recall_target`` within ``latency_budget_ms`` (p50; 0: none;
    None: the ones asked for last, else 0.95 and 50 ms), with text queries through
    the index's model when ``text_queries`` and it loads (a few seconds, small beside
    a rebuild), else with image queries only; ``queries`` (typed query vectors by
    kind, e.g. ``{"text": array}``) stand for the model's: then it is not loaded."""
    db_dir = Path(db_dir)
    check_shard_size(shard_size)
    faiss_device = faiss_gpu.resolve(faiss_device)
    with _claimed(db_dir, db_url, "reindex", "rewrites its FAISS files") as (store, info):
        automatic = factory == index_choice.AUTOMATIC
        mode = "auto" if automatic else "fixed" if factory else info.index_mode
        factory = None if automatic else factory
        if not factory:  # automatic: what the collection's size calls for now
            factory = (
                index_choice.choose(len(store.segment_ids()), info.dim, faiss_gpu.wanted(faiss_device)).factory
                if mode == "auto"
                else info.factory
            )
        shard_size = info.shard_size if shard_size is None else shard_size
        check_shard_count(shard_size, store.max_segment_id() or 0)
        store.files().backfill_sums()  # rows from before checksums get theirs: verified from now on
        index = (build or vectors.rebuild)(store, info.dim, factory, faiss_device, shard_size)
        vector_files.write_index_files(index, db_dir / FAISS_FILE, store, info.dim, factory, in_sync=True)
        store.set_factory(factory, mode)
        store.set_shard_size(shard_size)
        done = Reindexed(int(index.ntotal))
        if index_kinds.ivf_of(index.index) is not None and index.ntotal:  # the index calibration tunes
            try:
                model = calibration.model_for(info, db_dir) if text_queries and not queries else None
                done.calibration = calibrate_index(
                    db_dir, store, index, model, recall_target, queries, latency_budget_ms
                )
            except KeyboardInterrupt as exc:  # (its searches say so too: ``filters.effort_notes``)
                exc.add_note(
                    f"the index was rebuilt ({factory}, {done.vectors:,} vectors) but not calibrated: "
                    f"`usesearch calibrate {index_flags(db_dir, db_url)}` measures its recall and sets how hard its "
                    "searches look"
                )
                raise
        done.calibration_note = kept_for_later(db_dir, index, recall_target, latency_budget_ms, grows=mode == "auto")
        return done


def recalibrate(
    db_dir: str | os.PathLike,
    db_url: str | None = None,
    recall_target: float | None = None,
    text_queries: bool = True,
    queries: Mapping[str, np.ndarray] | None = None,
    latency_budget_ms: float | None = None,
    faiss_device: str | None = None,
) -> calibration.Calibration:
    """Measure the compressed index at ``db_dir`` again and choose its search effort
    (as ``reindex`` does after a rebuild, without the rebuild): after the machine was
    busy when it was measured, on the machine that will serve it, or for another
    ``recall_target`` or ``latency_budget_ms``. Arguments as for ``reindex``; timed
    with FAISS where ``faiss_device`` puts it, as a search there runs."""
    faiss_device = faiss_gpu.resolve(faiss_device)
    db_dir = check_index_at(db_dir, db_url)
    # Answered as the recorded factory says, before the claim: the same on a read-only
    # folder, or while an indexer writes to it, as on one calibrate can write to.
    reader = open_store(db_dir, db_url, read_only=True)
    try:
        recorded = reader.info()
        if recorded is not None:
            probe = vectors.Vectors(index_kinds.new_index(recorded.dim, recorded.factory))
            _refuse_untunable(db_dir, recorded.factory, probe, reader.max_segment_id())
    finally:
        reader.close()
    with _claimed(db_dir, db_url, "calibrate", "records its measurement there") as (store, info):
        index, _ = vector_files.load(db_dir / FAISS_FILE, store, info.dim, info.factory, faiss_device, info.shard_size)
        _refuse_untunable(db_dir, info.factory, index, index.ntotal)
        model = calibration.model_for(info, db_dir) if text_queries and not queries else None
        return calibrate_index(db_dir, store, index, model, recall_target, queries, latency_budget_ms)


def _refuse_untunable(db_dir: Path, factory: str, index: vectors.Vectors, count: int) -> None:
    """Why ``index`` (``count`` vectors) has nothing for calibration to measure, as an error."""
    if not count:
        raise UsesearchError(f"{db_dir} holds no vectors yet: nothing to measure")
    if index.exact:
        raise UsesearchError(f"{db_dir} has an exact index ({factory}): its recall is 1, nothing to tune")
    if index_kinds.ivf_of(index.index) is None:
        raise UsesearchError(
            f"{db_dir} has a {factory} index: calibration measures IVF indexes only (their nprobe and rerank)"
        )


@contextmanager
def _claimed(db_dir: Path, db_url: str | None, command: str, writes: str) -> Iterator[tuple[Store, IndexInfo]]:
    """The index's store and its info, claimed under the writer lock (a writer adding
    vectors meanwhile would move what is rebuilt or measured); closed after. ``command``
    and what it ``writes`` there: said where the folder cannot be written."""
    db_dir = check_index_at(db_dir, db_url)  # refuses a folder with no index before the lock creates one
    check_writable(db_dir, command, writes)
    store = open_store(db_dir, db_url)
    try:
        with writer_lock(db_dir):
            store.claim()
            info = store.info()
            if info is None:
                raise UsesearchError(f"{db_dir} holds no index yet")
            yield store, info
    finally:  # also when another writer holds the lock
        store.close()


# -- prune -------------------------------------------------------------------------------
@dataclass
class PruneReport(RunReport):
    considered: int = 0  # indexed images under the folders given (all when none)
    images_removed: int = 0
    removed: list[str] = field(default_factory=list)  # their paths
    segments_removed: int = 0
    moved: list[tuple[str, str]] = field(default_factory=list)  # (path, copy): a gone photo's record onto its copy
    copies_forgotten: int = 0  # noted copies (``stale_copies``) no re-run skips by any more
    embedding_bytes_freed: int = 0  # by compacting the embedding files afterwards
    fragment_bytes_freed: int = 0  # Ray runs' fragments left over (``fragments.remove_all``)
    calibrated: Any = None  # a ``calibration.Calibration`` measured again (shrunk past its last), else None
    calibration_note: str | None = None  # (a prune asks no target)
    failing_kept: int = 0  # photos failing since indexed, left with their segments (``kept_failures=False``)
    annotations_removed: dict[str, int] = field(default_factory=dict)  # by split: a labelled photo's, gone with it
    would_remove: list[tuple[str, str]] = field(default_factory=list)  # ``dry_run``: (path, why), nothing removed
    would_move: list[tuple[str, str]] = field(default_factory=list)  # ``dry_run``: (path, copy), nothing moved
    all_gone: bool = False  # ``dry_run``: every file considered is gone, so ``prune`` wants ``force``
    held: list[tuple[str, str]] = field(default_factory=list)  # (path, why): access refused, kept (``force``: gone)
    loop_seconds: float = 0.0
    interrupted: bool = False


def prune(
    db_dir: str | os.PathLike,
    under: list[str | os.PathLike] | None = None,
    options: IndexOptions | None = None,
    progress: Callable[[PruneReport, str, int], None] | None = None,
    force: bool = False,
    kept_failures: bool = True,
    dry_run: bool = False,
) -> PruneReport:
    """Remove from the index at ``db_dir`` every image whose file is gone (``under``:
    these photos, or those under these folders; anywhere when None). When every one of
    them is gone, however few, nothing is removed unless ``force``: an unmounted disk
    must not empty an index (photos named one by one are meant, and go). Nor is a photo
    whose access is refused (a folder's permissions, an I/O error: ``held``) unless
    ``force`` or named: a chmod gives it back. A photo indexed,
    then failing at a re-run, goes while it still fails to read now (within ``options``'
    limits); with ``kept_failures=False`` (``index --prune``, right after the run that
    kept its segments) it stays, counted in ``failing_kept``. ``dry_run``: what would go, in
    ``would_remove`` with why, read without the writer's lock (an index run may go on)."""
    options = options or IndexOptions()
    db_dir = check_index_at(db_dir, options.db_url)  # before the lock makes the folder
    if dry_run:
        return _prune_plan(Path(db_dir), under, options, kept_failures, force)
    check_writable(db_dir, "prune", "removes gone photos from it and compacts its files")
    report = PruneReport()
    start = time.perf_counter()
    with Writer(Path(db_dir), options, None) as writer:
        considered, gone, held, all_gone = _prune_choice(writer.store, under, options, kept_failures, force)
        report.considered, report.held = len(considered), [(path, why) for _, path, why in held]
        if not kept_failures:  # those left to `prune`: still there, said by the caller
            failing = writer.store.kept_failure_ids()
            report.failing_kept = len(failing & {i for i, _, _ in considered} - {i for i, _, _ in gone})
        if all_gone and not force:
            scope = scope_args(under)
            raise EverythingGoneError(
                f"all {len(considered)} files the index records{' under' + scope if scope else ''} are gone "
                f"(is the disk mounted?); nothing was removed. `usesearch prune{scope} "
                f"{index_flags(db_dir, options.db_url)} --force` removes them"
            )

        copies = copies_holding(writer.store, [image_id for image_id, _, _ in gone])

        def removals():
            for image_id, path, _why in gone:
                copy = copies.get(image_id)
                if copy is not None:  # its segments and labels kept, under the copy's path
                    shown = display_path(os.fsdecode(copy[0]))
                    writer.store.move_image(image_id, copy[0], shown, copy[1])
                    writer.store.forget_copies([copy[0]])
                    report.moved.append((path, shown))
                    yield path
                    continue
                report.segments_removed += writer.remove_image(image_id, lost_annotations=True)
                report.images_removed += 1
                report.removed.append(path)
                report.annotations_removed = dict(writer.store.annotations_lost)
                yield path

        writer.run(
            removals(),
            report,
            lambda path: progress and progress(report, path, len(gone)),
            again="`usesearch prune` again (removals so far are kept)",
        )
        if not report.interrupted:
            stale = stale_copies(writer.store, under)
            writer.store.forget_copies(stale)
            report.copies_forgotten = len(stale)
            report.embedding_bytes_freed = compact(writer.store).bytes_freed
            report.fragment_bytes_freed = fragments.remove_all(db_dir)
            writer.write()  # the files are unchanged; record that they hold this generation too
    report.seconds = time.perf_counter() - start
    return report


def _prune_choice(store: Store, under, options: IndexOptions, kept_failures: bool, force: bool = False):
    """(the images considered, those gone with why, those whose access is refused, kept
    unless ``force`` or named one by one, and whether every one considered is gone where
    they were not named one by one: an unmounted disk, for which ``prune`` wants
    ``force``): what a prune removes and its dry run lists. With ``kept_failures=False``
    (``index --prune``) a photo the run just kept failing goes only where it is missing."""
    considered = images_under(store, under)
    failed, failing = failure_sets(store, kept_failures)
    photos_named = set(named(under or [])) >= {bytes(fs_path) for _, fs_path, _ in considered}
    held: list[tuple[int, str, str]] = []
    gone = gone_images(considered, failed, failing, options, store, None if force or photos_named else held)
    return considered, gone, held, len(gone) == len(considered) > 0 and not photos_named


def _prune_plan(db_dir: Path, under, options: IndexOptions, kept_failures: bool, force: bool) -> PruneReport:
    """``prune``'s choice of photos, made and reported, nothing removed (its fragment
    bytes: those prune would remove)."""
    report, start = PruneReport(), time.perf_counter()
    store = open_store(db_dir, options.db_url, read_only=True)
    try:
        considered, gone, held, report.all_gone = _prune_choice(store, under, options, kept_failures, force)
        copies = copies_holding(store, [image_id for image_id, _, _ in gone])
    finally:
        store.close()
    # (the fragments prune removes too: a dry run's "nothing" said nothing of them)
    report.fragment_bytes_freed = fragments.left_over(db_dir)
    report.considered, report.held = len(considered), [(path, why) for _, path, why in held]
    shown = {i: display_path(os.fsdecode(copy[0])) for i, copy in copies.items()}
    report.would_move = [(path, shown[i]) for i, path, _ in gone if i in shown]
    report.would_remove = [(path, why) for i, path, why in gone if i not in shown]
    report.seconds = time.perf_counter() - start
    return report


# -- compact -----------------------------------------------------------------------------
DEAD_SHARE = 0.25  # rewrite a chunk once this share of its rows is dead
MOVE_BATCH = 65_536  # rows read, appended and committed at a time (~200 MB at 768-d)


@dataclass
class CompactReport:
    chunks_removed: int = 0
    rows_moved: int = 0
    bytes_freed: int = 0


def compact(store: Store, dead_share: float = DEAD_SHARE) -> CompactReport:
    """Rewrite the chunks that are at least ``dead_share`` dead (the newest, still
    being appended to, is left alone) and delete those no segment refers to. Call it
    holding the index's writer lock (``writer.Writer``)."""
    files, report = store.files(), CompactReport()
    chunks = files.chunks()
    live = live_rows(store)
    closed = chunks[:-1]  # appends go to the last chunk: never move rows out of it
    to_move = [c for c in closed if 0 < live.get(c, 0) and 1 - live[c] / max(1, files.rows_in(c)) >= dead_share]
    if to_move:
        with store.sessions() as s:
            moving = np.array(
                s.execute(
                    select(SegmentRecord.id, SegmentRecord.vec_chunk, SegmentRecord.vec_row)
                    .where(SegmentRecord.vec_chunk.in_(to_move))
                    .order_by(SegmentRecord.vec_chunk, SegmentRecord.vec_row)
                ).all(),
                np.int64,
            ).reshape(-1, 3)
        for lo in range(0, len(moving), MOVE_BATCH):
            part = moving[lo : lo + MOVE_BATCH]
            new_chunks, new_rows = files.append(
                files.read(part[:, 1], part[:, 2], np.float16, ids=part[:, 0])
            )  # the same bits
            _point_at(store, part[:, 0], new_chunks, new_rows)
            report.rows_moved += len(part)
    live = live_rows(store)
    for chunk in closed:
        if not live.get(chunk):
            report.bytes_freed += files.remove(chunk)
            report.chunks_removed += 1
    if report.chunks_removed:
        # A new generation after the unlinks: a server's location map synced between the last
        # re-pointing commit and an unlink would otherwise keep pointing into a deleted chunk.
        _new_generation(store)
    return report


def _new_generation(store: Store) -> None:
    def write():
        with store.sessions.begin() as s:
            s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))

    store.retrying(write)


def _point_at(store: Store, ids: np.ndarray, chunks: np.ndarray, rows: np.ndarray) -> None:
    def write():
        with store.sessions.begin() as s:
            s.execute(
                update(SegmentRecord),
                [{"id": int(i), "vec_chunk": int(c), "vec_row": int(r)} for i, c, r in zip(ids, chunks, rows)],
            )
            s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))

    store.retrying(write)
