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
from pathlib import Path

from . import calibration, vector_files, vectors
from .folder import FAISS_FILE
from .locations import LocationMap
from .records import IndexInfo
from .rwlock import ReadWriteLock
from .store import Store

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]


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
    _index_lock: ReadWriteLock
    _locations: LocationMap | None

    def refresh(self) -> None:
        """Bring the in-memory FAISS index up to the store's committed state, and to the
        files the writer last wrote (a stat of two files a search)."""
        files = self._files_stamp()
        generation = self.store.generation()
        if generation != self._generation or files != self._files_seen:
            with self._index_lock.writing():
                if files != self._files_seen:  # (another thread may have done it meanwhile)
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
        """The FAISS files rewritten (every few minutes while a writer runs): a regrown
        index loaded. The calibration rewritten, or the index reloaded: it read again
        (not at each rewrite: its check hashes the index's centroids, 200 MB at 65,536
        lists); one measured on another training than the one held (a ``reindex`` with
        the same factory) has the files' index loaded with it."""
        reloaded = False
        info = self.store.info() if files[0] != self._files_seen[0] else None
        if info is not None and (info.factory, info.shard_size) != (self.info.factory, self.info.shard_size):
            reloaded = self._reload(info)
        if reloaded or files[1] != self._files_seen[1]:
            found = calibration.load(self.db_dir, self.index)
            if found is None and files[1] is not None and not reloaded and not self.index.exact:
                self._reload(self.store.info() or self.info)
                found = calibration.load(self.db_dir, self.index)
            self.calibration = found
            calibration.apply(self.index, found)
        self._files_seen = files

    def _reload(self, info: IndexInfo) -> bool:
        log.info("%s holds %s anew: loading its files", self.db_dir, info.factory)
        path, device = self.db_dir / FAISS_FILE, self.index.device
        self.index, _ = vector_files.load(path, self.store, info.dim, info.factory, device, info.shard_size)
        self.info, self._known_up_to = info, None  # the next catch-up compares every id once
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
