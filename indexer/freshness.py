"""A reader keeping up with its index's writer (``SegmentIndex.refresh``, before each
search): the segments committed since (added alone; every id compared with the
catalog only after a removal), an index the writer regrew into another type or shard
layout (its files loaded again: a server kept adding to the exact index it opened, a
copy of every vector in memory and every search a full scan, long after the writer
had made it an IVF), and a calibration written since (``reindex``, ``recalibrate``,
the writer's at the end of a run): its search effort, not the one measured at open."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from usesearch.errors import StaleFilesError, UsesearchError

from . import calibration, vector_files, vectors
from .folder import FAISS_FILE
from .locations import LocationMap
from .records import IndexInfo
from .rwlock import ReadWriteLock
from .store import Store

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]
TYPE_CHECK_S = 30.0  # the type on record is also read this often: the writer records it after its files


class Freshness:
    """``SegmentIndex``'s side that follows the writer; the attributes it sets up."""

    db_dir: Path
    store: Store
    info: IndexInfo
    index: vectors.Vectors
    calibration: calibration.Calibration | None
    _generation: int
    _known_up_to: int | None  # the index holds exactly the committed ids up to it
    _files_seen: Stamp
    _type_due: float  # (time.monotonic) when the type on record is read next
    _locations_wanted: str  # the ``locations`` the index was opened with
    _index_lock: ReadWriteLock
    _locations: LocationMap | None
    _closed: bool

    def hold_locations(self, background: bool = False) -> None: ...  # (``SegmentIndex``'s)

    def check_open(self) -> None:
        if self._closed:  # its catalog connection would otherwise be opened again, silently
            raise UsesearchError("this index is closed: open it again (SegmentIndex.open)")

    def refresh(self) -> None:
        """Bring the in-memory FAISS index up to the store's committed state, and to the
        files the writer last wrote (a stat of two files a search)."""
        self.check_open()
        if not os.path.isdir(self.db_dir):  # its catalog, embeddings and masks went with it: the database's words else
            raise UsesearchError(
                f"the index folder {self.db_dir} is gone (moved or deleted) since it was opened: open it where it is"
            )
        files = self._files_stamp()
        generation = self.store.generation()
        due = time.monotonic() >= self._type_due
        if generation != self._generation or files != self._files_seen or due:
            with self._index_lock.writing():
                if files != self._files_seen or time.monotonic() >= self._type_due:  # (not done meanwhile)
                    self._follow_files(files)
                if generation != self._generation:
                    self._catch_up()
                    self.store.files().release_removed()  # no search reads meanwhile: the lock is ours
                    self._generation = generation
        if self._locations is not None and self._locations.ready:
            self._locations.sync(generation)  # a no-op at the generation it holds

    def _files_stamp(self) -> Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for name in (FAISS_FILE, calibration.FILE):
            try:
                st = os.stat(self.db_dir / name)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _follow_files(self, files: Stamp) -> None:
        """The index's type on record read when its files changed, or ``TYPE_CHECK_S``
        after it was last read (a writer records a regrown index's type after writing
        its files: a reader between the two saw nothing to follow, and no later write
        need come); another than the one held has its files loaded. The calibration
        read when its file changed or the index was reloaded (not at each rewrite of
        the FAISS files: its check hashes the centroids, 200 MB at 65,536 lists)."""
        reloaded = False
        if files[0] != self._files_seen[0] or time.monotonic() >= self._type_due:
            self._type_due = time.monotonic() + TYPE_CHECK_S
            info = self.store.info()
            if info is not None and (info.factory, info.shard_size) != (self.info.factory, self.info.shard_size):
                reloaded = self._reload(info)
        if reloaded or files[1] != self._files_seen[1]:
            found = calibration.load(self.db_dir, self.index)
            if found is None and files[1] is not None and not reloaded and not self.index.exact:  # reindexed
                reloaded = self._reload(self.store.info() or self.info)
                found = calibration.load(self.db_dir, self.index) if reloaded else None
            self.calibration = found
            calibration.apply(self.index, found)
        self._files_seen = files

    def _reload(self, info: IndexInfo) -> bool:
        """The index's files loaded in place of the one held; False, keeping it, where
        they do not match the record yet (a file renamed into place, its checksum not
        yet recorded: rebuilding it from the catalog would stall every search here)."""
        path, device = self.db_dir / FAISS_FILE, self.index.device
        try:
            index, _ = vector_files.load(
                path, self.store, info.dim, info.factory, device, info.shard_size, rebuild_unverified=False
            )
        except StaleFilesError as exc:  # tried again when the files change, or TYPE_CHECK_S on
            log.debug("%s; loaded at a later search", exc)
            return False
        log.info("%s holds %s anew: its files loaded", self.db_dir, info.factory)
        self.index, self.info, self._known_up_to = index, info, None  # the next catch-up compares every id once
        if self._locations is None and self._locations_wanted != "catalog":
            self.hold_locations(background=True)  # (an exact index opened had none; an IVF uses them)
        return True

    def _catch_up(self) -> None:
        """While an indexer commits, each commit is a new generation. Ids only grow (one
        writer; never reused), so the segments committed since are those above the
        highest one known: added alone. Removals (a changed or pruned photo) show as
        fewer segments committed than the index holds, and only then (and once,
        to learn the highest id) is every id compared with the store
        (``vectors.reconcile_all``: 17 s at 10M segments, which each search paid,
        under the lock, after every commit)."""
        known = self._known_up_to
        if known is not None and self.index.is_trained:
            high, count = self.store.segments_now()
            if high > known:
                for ids, batch in self.store.embeddings(self.store.segment_ids_between(known + 1, high)):
                    self.index.add(ids, batch)
                self._known_up_to = high
            if self.index.ntotal == count:
                return
        _, _, self._known_up_to = vectors.reconcile_all(self.index, self.store)  # also trains an untrained index
