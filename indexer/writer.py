"""``Writer``: the one writer of an index folder. Every image is committed through it (a store
transaction each) by the sequential indexer, the Ray driver and ``prune`` alike; it keeps FAISS in step."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType

import numpy as np

from usesearch import interrupts
from usesearch.errors import DiskFullError, UsesearchError, is_disk_full

from . import faiss_gpu, growth, index_kinds, vector_files, vectors
from .calibrating import calibrate_if_due, kept_for_later
from .folder import FAISS_FILE, check_catalog_kind, db_url_for, keep_head_copy, remove_if_bare, writer_lock
from .fragments import worker_error
from .image_writes import PhotoWrite, joined
from .index_checks import check_factory, check_identity
from .known_images import KnownImages, fits_now, still_holds
from .options import IndexOptions, IndexReport, LoopReport, check_shard_count
from .records import DONE, FAILED, IndexInfo
from .repair import Repair, drop_damaged
from .store import Store

log = logging.getLogger(__name__)


class Writer:
    """The one writer of an index folder: its lock, its store (checked against the
    model's identity) and its FAISS file (see the module's docstring)."""

    store: Store
    info: IndexInfo
    index: vectors.Vectors

    def __init__(
        self,
        db_dir: Path,
        options: IndexOptions,
        info: IndexInfo | None,
        paths: Sequence[str | os.PathLike] | None = None,
        model=None,
    ):
        self.db_dir, self.options, self.wanted = db_dir, options, info  # None: the index's own identity
        self.model = model  # the run's embedder, for text queries when calibrating (None: image queries only)
        self.paths = paths  # the folders being indexed: ``--repair`` drops damaged photos under them only
        self.repair = Repair()  # what ``--repair`` dropped to embed again, or left (``repair.drop_damaged``)
        self.moved: list[tuple[str, str]] = []  # (old path, new path): a photo renamed or moved since indexed
        # (path, the indexed photo it repeats): a copy of a photo earlier in this run waits in
        # ``_copies_coming`` until that photo is committed (an append each: no list rebuilt)
        self.copies: list[tuple[str, str]] = []
        self.copies_replacing: list[tuple[str, int]] = []  # (path, segments): indexed before with other content
        self.failed_before = 0  # files skipped as failed by an earlier run, with the same content
        self.in_sync = True
        self.growth = growth.Growth()
        # By content (``skip``, ``fail``): (key, path, stat, the record of its old content, where it had one)
        self._copies_coming: dict[str, list[tuple[bytes, str, str | None, int | None]]] = {}
        self._failed_contents: set[str] = set()  # the contents of files failed in this run

    def __enter__(self) -> Writer:
        if self.options.factory and self.wanted is not None:  # before a new index's folder is made
            index_kinds.new_index(self.wanted.dim, self.options.factory)  # a ValueError naming what is wrong
            if not self.db_dir.exists() and self.options.db_url is None:  # surely new (a server's may not be)
                check_factory(None, self.options.factory, self.wanted, self.db_dir, self.options.db_url)
        new_folder = not self.db_dir.exists()
        self._lock: AbstractContextManager[None] = writer_lock(self.db_dir)
        self._lock.__enter__()
        store = None
        try:
            check_catalog_kind(self.db_dir, self.options.db_url)
            store = self.store = Store(db_url_for(self.db_dir, self.options.db_url), folder=self.db_dir)
            self.known = KnownImages(store)
            store.claim(adopt=self.options.repair)
            if self.options.factory:
                check_factory(store.info(), self.options.factory, self.wanted, self.db_dir, self.options.db_url)
            info = check_identity(store, self.wanted) if self.wanted is not None else store.info()
            if info is None:
                raise UsesearchError(f"{self.db_dir} holds no index yet")
            self.info = info
            if self.wanted is not None and info.model_head is not None:  # its head loaded and matched
                keep_head_copy(self.db_dir, self.options.head or info.model_head, given=self.options.head is not None)
            store.note_folders({os.fsencode(os.path.realpath(p)) for p in self.paths or [] if os.path.isdir(p)})
            if self.options.shard_size is not None and self.options.shard_size != info.shard_size:
                check_shard_count(self.options.shard_size, store.max_segment_id() or 0)
                log.warning(
                    "laying %s out anew in shards of %s segments (--shard-size; it had %s): its FAISS files are "
                    "rebuilt from the database",
                    self.db_dir,
                    f"{self.options.shard_size:,}" if self.options.shard_size else "all its",
                    f"{info.shard_size:,}" if info.shard_size else "one shard",
                )
                store.set_shard_size(self.options.shard_size)  # the next load lays the shards out anew
                info.shard_size = self.options.shard_size
            if self.options.repair:  # before the FAISS load, which may rebuild from the damaged rows
                self.repair = drop_damaged(store, self.paths or [])
            self.index, _ = vector_files.load(
                self.db_dir / FAISS_FILE,
                store,
                info.dim,
                info.factory,
                faiss_gpu.resolve(self.options.faiss_device),
                info.shard_size,
            )
            self.in_sync = True  # loaded: verified, then reconciled unless written at this generation
        except BaseException:
            try:
                if store is not None:
                    store.close()  # and with it the catalog's lock
                if new_folder:  # refused (another writer has the catalog): no empty folder left behind
                    remove_if_bare(self.db_dir)
            finally:
                self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            try:
                self.growth.stop()  # one in flight when the run ended early
                if kind is None:
                    self.known.flush()
            finally:
                self.store.close()
        finally:
            self._lock.__exit__(kind, exc, trace)

    def skip(
        self,
        key: bytes,
        sha256: str,
        coming: set[str] | frozenset[str] = frozenset(),
        path: str | None = None,
        file_stat: str | None = None,
    ) -> bool:
        """True when this file needs no work: done (or failed, unless retrying) with
        the same content, or it is a new path whose content is already indexed under
        another path or ``coming`` (about to be, earlier in this run). A photo renamed
        or moved (its content indexed under a path now gone) takes its record along;
        a copy of a photo still there is counted in ``copies``."""
        existing = self.known.take(key)
        if (
            existing is not None
            and existing.sha256 == sha256
            and (
                existing.proposals_made
                if existing.status == DONE
                else not (self.options.retry_failed or fits_now(existing, self.options.max_pixels))
            )
        ):  # a photo holding only a labelled dataset's annotations still needs its proposals
            self.known.read_as_recorded(existing, sha256, file_stat)
            self.failed_before += existing.status != DONE
            return True
        # A content that failed in this run is coming no more (the read-ahead's ``coming`` keeps its hash).
        coming_now = sha256 in coming and sha256 not in self._failed_contents
        holders = [] if coming_now else self.store.images_with_hash(sha256)
        if existing is not None and (path is None or (existing.status == DONE and existing.sha256 == sha256)):
            # Changed: computed again. Or labelled and waiting for its proposals: a photo of
            # its own whatever other path holds its bytes (removed as a copy, its annotations went too).
            return False
        # Each holder's file checked once (a stat, else its bytes hashed again).
        holding = {h.id for h in holders if still_holds(h)} if path is not None else set()
        if existing is not None:
            holders = [h for h in holders if h.id != existing.id and h.id in holding]
        if not holders and not coming_now:
            return False  # (changed: computed again)
        # Changed into a copy of a photo indexed under another path or coming earlier in this
        # run (two files made one content were both embedded): its old segments go (once that
        # photo is committed: failing with it, it keeps them) and it is counted as a copy.
        replaced = existing.id if existing is not None else None
        gone = [h for h in holders if path is not None and h.id not in holding]  # missing, or other content now
        if path is not None and gone:  # moved: the record follows the photo
            self._move(gone[0], key, path, file_stat)
        elif path is not None:
            # Of a photo earlier in this run: named once it is committed (failing, its copies fail too).
            committed = [h for h in self.store.images_with_hash(sha256) if h.proposals_made] if coming_now else []
            named = holders or committed  # (a labelled photo's record waiting for its proposals is not committed)
            if named:
                self._name_copy(path, named[0].path, replaced)
            else:
                self._copies_coming.setdefault(sha256, []).append((key, path, file_stat, replaced))
            if file_stat is not None:  # the next run skips it unread (``KnownImages.unchanged``)
                self.known.note_copy(key, sha256, file_stat)
        return True

    def follow_move(self, key: bytes, path: str, sha256: str, file_stat: str | None = None) -> bool:
        """A path the catalog lacks, holding the content of an indexed photo whose file is
        gone (or holds other content now): that record moves here with its segments, as
        ``skip`` moves it for a masker run (``index --coco`` made the renamed photo a new
        record, its proposals left on the old path). True where one moved."""
        gone = [h for h in self.store.images_with_hash(sha256) if not still_holds(h)]
        if gone:
            self._move(gone[0], key, path, file_stat)
        return bool(gone)

    def _move(self, record, key: bytes, path: str, file_stat: str | None) -> None:
        self.store.move_image(record.id, key, path, file_stat)
        self.known.forget(record.fs_path)  # read ahead, its old path would still name it (and remove it)
        self.moved.append((record.path, path))

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """A store change and the index change that mirrors it: until both are done
        (an interruption between them included) a write must not record that the
        index holds the store's generation (nor after: one cut short stays out of sync)."""
        before, self.in_sync = self.in_sync, False
        yield
        self.in_sync = before

    def commit(self, photos: list[PhotoWrite], report: IndexReport) -> None:
        """Photos' proposals, each replacing its old ones, in one transaction (``Store.save_images``)."""
        rows = [photo.vectors for photo in photos if photo.segments and photo.vectors is not None]
        save = lambda: joined(self.store.save_images(photos))  # noqa: E731
        self.apply(save, np.concatenate(rows) if rows else None, report)
        report.done += len(photos)
        for photo in photos:  # their copies are copies of an indexed photo now, which they name
            for _, copy_path, _, replaced in self._copies_coming.pop(photo.sha256 or "", []):
                self._name_copy(copy_path, photo.path, replaced)

    def _name_copy(self, path: str, of: str, replaced: int | None) -> None:
        """``path`` counted as a copy of ``of``; ``replaced``: its old content's record, kept until now."""
        gone = self.remove_image(replaced, lost_annotations=True) if replaced is not None else 0
        self.copies_replacing += [(path, gone)] if gone else []  # (a record that had failed held none)
        self.copies.append((path, of))

    def apply(
        self, write: Callable[[], tuple[list[int], list[int]]], embeddings: np.ndarray | None, report: IndexReport
    ) -> tuple[list[int], list[int]]:
        """A store transaction (``write``: it returns the segment ids it removed and
        those it added, whose ``embeddings`` these are), mirrored in FAISS."""
        with self._changing():
            start = time.perf_counter()
            removed, added = write()
            middle = time.perf_counter()
            if self._remove(removed) and added and embeddings is not None:
                if not self.index.is_trained:
                    vectors.reconcile(self.index, self.store)  # trains on what the store now holds
                else:
                    # What the embedding files hold (float16), so a rebuild gives the same scores.
                    as_stored = embeddings.astype(np.float16).astype(np.float32)
                    self.index.add(np.asarray(added, np.int64), as_stored, defer=True)
        report.add_stage("store", middle - start)
        report.add_stage("FAISS", time.perf_counter() - middle)
        report.segments += len(added)
        return removed, added

    def _remove(self, removed: list[int]) -> bool:
        """The removed ids out of FAISS; False where a retried write (an earlier try may have
        committed, its reply lost: what it removed is unknown) made FAISS the store's instead."""
        retried, self.store.retried = self.store.retried, False
        if retried:
            vectors.reconcile(self.index, self.store)
        else:
            self.index.remove(removed)
        self.growth.removed(removed, known=not retried)
        return not retried

    def fail(
        self, key: bytes, path: str, sha256: str | None, exc: BaseException, report: IndexReport, file_stat=None
    ) -> bool:
        """A file that failed: recorded as failed, or, indexed before, kept as it was
        with the failure noted (``Store.save_image``; True returned). ``file_stat``: taken
        before the read that gave ``sha256``; a re-run skips the file unread while it holds.
        One gone since the walk is said, not recorded: no later run meets it there."""
        existing = self.known.take(key)
        if isinstance(exc, FileNotFoundError) and not os.path.lexists(key):
            report.gone.append(path)
            return False
        with self._changing():  # (the stat kept only where the content is known: ``image_writes.write_photo``)
            removed, _ = self.store.save_image(key, path, sha256, None, error=exc, file_stat=file_stat)
            self._remove(removed)
        report.record_failure(path, exc, kept=(kept := existing is not None and existing.status == DONE))
        if sha256:
            self._failed_contents.add(sha256)
            for old in self.store.images_with_hash(sha256, status=FAILED):  # the same file moved: its failure too
                if old.fs_path != key and not os.path.lexists(old.fs_path):
                    self.remove_image(old.id)
        # Files skipped as copies of this one, queued before it failed, are no copies of an
        # indexed photo: they fail as it did (they were left out of ``failures``).
        for copy_key, copy_path, copy_stat, _ in self._copies_coming.pop(sha256, []) if sha256 else []:
            self.known.drop_copy(copy_key)
            copy_exc = _as_copys(exc, path, copy_path)
            self.store.save_image(copy_key, copy_path, sha256, None, error=copy_exc, file_stat=copy_stat)
            report.skipped -= 1
            report.record_failure(copy_path, copy_exc)
        return kept

    def _drop_uncommitted_copies(self) -> int:
        """Copies of a photo this run never committed: not in ``copies`` nor skipped (the
        next run reads them, as ``skip`` finds no photo they copy). How many there were."""
        dropped = sum(map(len, self._copies_coming.values()))
        self._copies_coming.clear()
        return dropped

    def remove_image(self, image_id: int, lost_annotations: bool = False) -> int:
        """Remove an image with its segments (one transaction) and their vectors (``Store.remove_image``)."""
        with self._changing():
            removed = self.store.remove_image(image_id, lost_annotations)
            self._remove(removed)
        return len(removed)

    def write(self) -> None:
        with self._changing():  # Ctrl-C amid the deferred adds: the files record no generation
            self.index.add_deferred()
        self.index = vector_files.write_index_files(
            self.index, self.db_dir / FAISS_FILE, self.store, self.info.dim, self.info.factory, in_sync=self.in_sync
        )

    def grow(self, wait: bool = False) -> None:
        """An outgrown automatic index rebuilt as its size calls for (in a thread, while
        the run goes on: ``growth``), written, then recorded; ``wait``: the run's end."""
        with self._changing():  # its deferred adds in first (as in ``write``): its size is what it holds
            self.index.add_deferred()
        grown = self.growth.poll(self.index, self.info, self.store, self.db_dir, wait)
        if grown is None:
            return
        before = self.index, self.info.factory
        self.index, self.info.factory = grown
        try:
            self.write()
        except BaseException:  # Ctrl-C's write then writes the index the record names
            self.index, self.info.factory = before
            raise
        # Recorded once written: a write cut short leaves the old one on record (grown again next run).
        self.store.set_factory(self.info.factory)

    def run(
        self,
        steps: Iterable[str],
        report: LoopReport,
        progress: Callable[[str], object],
        again: str = "`usesearch index` again (finished images are kept)",
    ) -> None:
        """Drive ``steps`` (each commits some images and yields a path for progress),
        writing the FAISS file every ``faiss_every_s``, at the end (after following
        the collection's growth) and on Ctrl-C. ``again``: what a full disk's message
        tells the user to run once space is freed."""
        last_write = time.monotonic()
        loop_start = time.perf_counter()
        try:
            interrupts.raise_if_lost()  # one its start-up swallowed: before the first photo's work
            for path in steps:
                interrupts.raise_if_lost()
                progress(path)
                if time.monotonic() - last_write > self.options.faiss_every_s:
                    self.grow()  # a first run of 10^6 photos must not hold 10^8 exact vectors (300 GB)
                    self.write()
                    last_write = time.monotonic()
            if self.paths:  # a folder the walk could not list before, walked now: its failure goes
                from .leftovers import folders_listing_now

                for image_id in folders_listing_now(self.store, list(self.paths)):
                    self.store.remove_image(image_id)
            self.grow(wait=True)
            self.write()
            report.calibrated = calibrate_if_due(
                self.db_dir, self.store, self.index, self.model, self.options.recall_target
            )
            report.calibration_note = kept_for_later(
                self.db_dir, self.index, self.options.recall_target, grows=self.info.index_mode == "auto"
            )
        except KeyboardInterrupt:
            interrupts.handled()
            report.interrupted = True  # finished images are committed; keep them
            report.skipped -= self._drop_uncommitted_copies()
            self.write()
        except Exception as exc:
            if is_disk_full(exc):
                # What is committed stays committed; the vector file catches up on the next open.
                raise DiskFullError(
                    f"disk full: cannot write the index in {self.db_dir}; free space and run {again}"
                ) from None
            raise
        finally:
            report.loop_seconds = time.perf_counter() - loop_start


def _as_copys(exc: BaseException, path: str, copy_path: str) -> BaseException:
    """``path``'s failure as its copy's: same class name, the message naming the copy
    (a copy's record said "cannot read image <its twin>")."""
    message = str(exc)
    return worker_error(f"{type(exc).__name__}: {message.replace(path, copy_path)}") if path in message else exc
