"""An automatic index grown into the type its size calls for without stalling the run.

The collection outgrows its index type during a long first run (exact search past
``index_choice.EXACT_UP_TO``, an IVF with a quarter of the lists it should have). The
rebuild read, trained and filled the new index in the writer's thread: minutes at tens
of millions of segments, with SAM and the backbones idle (on a GPU, the whole card).
Now the new index is trained and filled in a thread of its own (FAISS and the reads
release the GIL), from the segments committed when it started (ids up to the highest
then: ids only grow), through a read-only store of its own, while the writer keeps
committing and adding to the old index. Once built it catches up on what changed
meanwhile: the ids removed since leave it, the segments committed since are added
from the store; then it takes the old index's place. Where a retried write left the
removals unknown, it is reconciled with the store in full instead."""

from __future__ import annotations

import logging
import os
import threading

from . import catalog, faiss_gpu, index_choice, vectors
from .records import IndexInfo
from .store import Store

log = logging.getLogger(__name__)


def wanted_factory(index: vectors.Vectors, info: IndexInfo, db_dir: os.PathLike | str) -> str | None:
    """The factory an automatic index that the collection has outgrown (or shrunk out
    of) is to be rebuilt as; None when it fits."""
    n = index.ntotal
    gpu = faiss_gpu.wanted(index.device)
    if info.index_mode != "auto" or not index_choice.outgrown(info.factory, n, info.dim, gpu):
        return None
    choice = index_choice.choose(n, info.dim, gpu)
    # (not "outgrew": prune may have shrunk it below what its type is for)
    log.warning("%s: %d segments no longer suit %s; building %s", db_dir, n, info.factory, choice.describe(n, info.dim))
    return choice.factory


class Build:
    """One new index being built in a thread from the store's segments up to ``up_to``."""

    def __init__(self, store: Store, info: IndexInfo, factory: str, device: str | None):
        self.factory = factory
        self.up_to = catalog.while_reachable(
            store.max_segment_id, store.url
        )  # the writer's thread: nothing commits meanwhile
        self.removed: list[int] = []  # ids removed from the store since ``up_to`` was read
        self.reconcile = False  # a retried write: what it removed is unknown
        self._stop = threading.Event()
        self._built: vectors.Vectors | None = None
        self._error: BaseException | None = None
        args = (store.url, store.folder, info.dim, device, info.shard_size)
        self._thread = threading.Thread(target=self._run, args=args, name="usesearch-index-growth", daemon=True)
        self._thread.start()

    def _run(self, url: str, folder: os.PathLike, dim: int, device: str | None, shard_size: int) -> None:
        def build() -> vectors.Vectors:
            store = Store(url, read_only=True, folder=folder)  # the writer's sessions stay its own
            try:
                return vectors.rebuild(store, dim, self.factory, device, shard_size, self.up_to, self._stop)
            finally:
                store.close()

        try:
            self._built = catalog.while_reachable(
                build, url
            )  # a server restart: built again, as the writes are retried
        except vectors.BuildStopped:
            pass
        except BaseException as exc:  # raised in the writer's thread, where the rebuild's errors were
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def finish(self, store: Store) -> vectors.Vectors:
        """The built index, brought up to the store's committed segments (waits for it)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        built = self._built
        assert built is not None  # (set unless stopped, and only ``stop`` stops it)
        if self.reconcile:  # (again from the start after a server restart: it compares, then adds)
            catalog.while_reachable(lambda: vectors.reconcile(built, store), store.url)
            return built
        built.remove(self.removed)
        added = self.up_to

        def add_since() -> None:  # after a server restart, from the last id added
            nonlocal added
            for ids, batch in store.embeddings(store.segment_ids_between(added + 1, 2**62)):
                built.add(ids, batch)
                added = int(ids.max())

        catalog.while_reachable(add_since, store.url)
        return built

    def stop(self) -> None:
        """Let the build go (a run ended early): it stops at its next batch, unjoined (a
        Ctrl-C must not wait for a k-means to end)."""
        self._stop.set()


class Growth:
    """The writer's growth: at most one build at a time."""

    def __init__(self) -> None:
        self.build: Build | None = None

    def removed(self, ids: list[int], known: bool = True) -> None:
        """Ids the writer removed from the store (``known``: False where a retried write
        left them unknown: the build is then reconciled in full)."""
        if self.build is not None:
            self.build.removed.extend(ids)
            self.build.reconcile |= not known

    def poll(
        self, index: vectors.Vectors, info: IndexInfo, store: Store, db_dir: os.PathLike | str, wait: bool
    ) -> tuple[vectors.Vectors, str] | None:
        """A grown index and its factory once one is built (``wait``: wait for one in
        flight, or build it now); starts a build when the index is outgrown."""
        if self.build is None:
            factory = wanted_factory(index, info, db_dir)
            if factory is None:
                return None
            self.build = Build(store, info, factory, index.device)
        if not (wait or self.build.done()):
            return None
        grown = self.build.finish(store), self.build.factory
        self.build = None  # only now: a Ctrl-C in ``finish``'s wait still finds it to ``stop``
        return grown

    def stop(self) -> None:
        if self.build is not None:
            self.build.stop()
            self.build = None
