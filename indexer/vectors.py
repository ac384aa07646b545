"""FAISS vectors keyed by segment id, kept consistent with the store (the files
they are kept in: ``vector_files.py``).

- ``reconcile`` makes an index hold exactly the committed segment ids: ids the store
  does not have (written just before a crash) are removed, committed ids it lacks
  are added from the stored embeddings. So a query never sees shifted, missing or
  uncommitted ids.
- Index types without ``remove_ids`` (HNSW) keep removed ids as *stale*: they are
  excluded from every search by an ``IDSelector`` until the next rebuild, which
  happens whenever the file is written.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import faiss
import numpy as np

from . import faiss_gpu
from .catalog import index_flags
from .index_choice import nprobe_for, train_size_for
from .index_kinds import hnsw_of, index_ids, ivf_of, new_index, opq_matrices, product_quantizers
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "IDMap2,Flat"  # exact inner product over unit vectors = cosine
DEFERRED_ADDS = 2048  # vectors a writer's commits gather before they go into FAISS (``Vectors.add``)


def search_params(
    index: faiss.Index, selector: faiss.IDSelector | None, nprobe: int | None = None, k: int = 0
) -> faiss.SearchParameters:
    """Search parameters of the right class for the wrapped index (IVF and HNSW check
    the type), carrying its current nprobe / efSearch and the selector. An HNSW search
    for ``k`` results explores at least 2k nodes: with its default (16) it returned 134
    of 212 vectors asked for all, 77 hits of 100 asked on a small index."""
    hnsw = hnsw_of(index)
    ivf = ivf_of(index)
    params: faiss.SearchParameters
    if ivf is not None:
        params = ivf_params = faiss.SearchParametersIVF()
        ivf_params.nprobe = min(ivf.nlist, nprobe) if nprobe else ivf.nprobe
    elif hnsw is not None:
        params = hnsw_params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stub
        hnsw_params.efSearch = max(hnsw.hnsw.efSearch, 2 * k)
    else:
        params = faiss.SearchParameters()
    params.sel = selector
    return params


def id_selector(ids: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray | None]:
    """A FAISS selector of these ids, and the bitmap it reads (to keep alive while it is
    used). A bitmap over ids 0..max where they are dense enough: FAISS's hash set took
    17 ms to build for 160,000 ids (the whole of a filtered search's FAISS time), the
    bitmap 0.5 ms; a sparse few stay a hash set (a bitmap costs a bit per id up to max)."""
    if not len(ids) or len(ids) * 64 < int(ids.max()):
        return faiss.IDSelectorBatch(ids), None
    member = np.zeros(int(ids.max()) + 1, bool)
    member[ids] = True
    bits = np.packbits(member, bitorder="little")  # FAISS reads bit i & 7 of byte i >> 3
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits


def ranked(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` (scores, ids), best first; ties: the lower id first. One rule for
    FAISS's answers (its heap orders equal scores as it happens to), merging shards,
    and scoring rows exactly."""
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]


class Vectors:
    """One store's FAISS index: one or more shards (an ``IDMap2``, or an IVF with its
    own ids, each), plus the stale ids of index types that cannot remove vectors.

    With ``shard_size`` > 0, segment id i lives in shard (i - 1) // shard_size. Every
    shard is a copy of one trained empty index (the same coarse quantizer and
    codebook), so scores compare across shards and a search of all of them, merged
    by score, answers exactly as one index with the same contents. New segments
    land in the last shard, so a write rewrites only the shards that changed."""

    def __init__(self, index: faiss.Index | list[faiss.Index], device: str | None = "cpu", shard_size: int = 0):
        self._shards = list(index) if isinstance(index, list) else [index]
        self.shard_size = shard_size
        self.stale = np.zeros(0, np.int64)
        self.device = device
        self._dirty = set(range(len(self._shards)))  # shards changed since they were last written
        self._gpu: faiss.Index | None = None  # mirror for unfiltered searches (faiss_gpu.py)
        self._gpu_current = False
        self._deferred: list[tuple[np.ndarray, np.ndarray]] = []  # ``add(..., defer=True)``, not yet in FAISS
        self._deferred_rows = 0

    @property
    def shards(self) -> list[faiss.Index]:
        """The shards, holding every vector added so far (deferred ones go in first)."""
        self.add_deferred()
        return self._shards

    @property
    def dirty(self) -> set[int]:
        """The shards changed since they were last written (deferred adds included)."""
        self.add_deferred()
        return self._dirty

    @property
    def index(self) -> faiss.Index:
        """The first shard: the index type, its training and its parameters."""
        return self.shards[0]

    @property
    def ntotal(self) -> int:
        return sum(int(shard.ntotal) for shard in self.shards) - len(self.stale)

    @property
    def is_trained(self) -> bool:
        return bool(self._shards[0].is_trained)  # (deferred adds change no training: read as they are)

    @property
    def exact(self) -> bool:
        """Scores are exact inner products (a flat index), not approximations that
        must be re-scored."""
        outer = faiss.downcast_index(self._shards[0])
        return isinstance(outer, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(outer.index), faiss.IndexFlat)

    def ids(self) -> np.ndarray:
        have = np.concatenate([index_ids(shard) for shard in self.shards])
        return np.setdiff1d(have, self.stale, assume_unique=True) if len(self.stale) else have

    def _by_shard(self, ids: np.ndarray):
        """(shard number, positions in ids) for each shard the ids fall into."""
        if not self.shard_size:
            yield 0, np.arange(len(ids))
            return
        numbers = (ids - 1) // self.shard_size
        for number in np.unique(numbers).tolist():
            yield number, np.flatnonzero(numbers == number)

    def _shard(self, number: int) -> faiss.Index:
        while len(self._shards) <= number:  # a new shard: the trained index, empty
            fresh = faiss.clone_index(self._shards[0])
            fresh.reset()
            self._shards.append(fresh)
            self._dirty.add(len(self._shards) - 1)
        return self._shards[number]

    def add(self, ids: np.ndarray, vectors: np.ndarray, defer: bool = False) -> None:
        """Add vectors under their segment ids. ``defer`` (the one writer's commits,
        a photo's 100 at a time): they go into FAISS ``DEFERRED_ADDS`` at a time, or as
        soon as anything reads the shards: an IVF fast-scan add cost 31.6 ms per 100
        vectors added 100 at a time, 3.7 ms added 1,000 at a time (4,096 lists, 768-d,
        2 cores). Not for an index that threads search: a search would add them."""
        ids, vectors = np.asarray(ids, np.int64), np.ascontiguousarray(vectors, np.float32)
        self._deferred.append((ids, vectors))
        self._deferred_rows += len(ids)
        if not defer or self._deferred_rows >= DEFERRED_ADDS:
            self.add_deferred()

    def add_deferred(self) -> None:
        """The deferred adds into FAISS now (any read of the shards does it first)."""
        if not self._deferred:
            return
        parts, self._deferred, self._deferred_rows = self._deferred, [], 0
        ids = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        vectors = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        for number, rows in self._by_shard(ids):
            self._shard(number).add_with_ids(vectors[rows], ids[rows])
            self._dirty.add(number)
        self._gpu_current = False

    def remove(self, ids) -> None:
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        self._gpu_current = False
        for number, rows in self._by_shard(ids):
            if number >= len(self.shards):
                continue
            try:
                self.shards[number].remove_ids(faiss.IDSelectorBatch(ids[rows]))
                self.dirty.add(number)
            except RuntimeError:  # e.g. HNSW: "remove_ids not implemented"
                self.stale = np.union1d(self.stale, np.intersect1d(ids[rows], index_ids(self.shards[number])))

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded=(), nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) for one query among ``allowed`` ids (all when None),
        never returning stale or ``excluded`` ids, over all shards merged by score.
        Filters go to FAISS as an IDSelector, so a narrow filter costs less than none.
        ``nprobe``: clusters an IVF visits for this search (None: its own setting)."""
        query = np.ascontiguousarray(query, np.float32).reshape(1, -1)
        k = min(k, self.ntotal if allowed is None else len(allowed))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        keep: list[object] = []  # the selectors (and the bitmap one reads) must outlive the search call
        selector: faiss.IDSelector | None = None
        if allowed is not None:
            selector, bits = id_selector(np.asarray(allowed, np.int64))
            keep += [selector, bits]
        dropped = np.union1d(self.stale, np.asarray(list(excluded), np.int64))
        if len(dropped):
            batch = faiss.IDSelectorBatch(dropped)
            not_dropped = faiss.IDSelectorNot(batch)
            keep += [batch, not_dropped]
            combined = not_dropped if selector is None else faiss.IDSelectorAnd(selector, not_dropped)
            keep.append(combined)
            selector = combined
        if selector is None and nprobe is None and len(self.shards) == 1 and hnsw_of(self.index) is None:
            answer = self._search_mirror(query, k)
            scores, ids = answer if answer is not None else self.index.search(query, k)
            found = ids[0] >= 0
            return ranked(scores[0][found], ids[0][found], k)  # FAISS's heap leaves equal scores in no set order
        params = search_params(self.index, selector, nprobe, k)
        parts = [shard.search(query, min(k, int(shard.ntotal)), params=params) for shard in self.shards if shard.ntotal]
        scores = np.concatenate([p[0][0] for p in parts]) if parts else np.zeros(0, np.float32)
        ids = np.concatenate([p[1][0] for p in parts]) if parts else np.zeros(0, np.int64)
        found = ids >= 0
        return ranked(scores[found], ids[found], k)

    def refresh_mirror(self) -> None:
        """Copy the index to its GPU mirror again before the next search (after a change of its parameters)."""
        self._gpu_current = False

    def _search_mirror(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """FAISS's answer from the GPU mirror (built, or built again after changes, on
        first use); None where FAISS runs on the CPU, the search is past what a GPU
        index takes (``faiss_gpu.MAX_K``), or the GPU cannot hold or search the index
        (said once; the CPU index answers until the index changes and a new mirror is tried)."""
        ivf = ivf_of(self.index)
        if not faiss_gpu.wanted(self.device) or max(k, ivf.nprobe if ivf is not None else 0) > faiss_gpu.MAX_K:
            return None
        with faiss_gpu.LOCK:  # the web app's threads search at once; a GPU index takes one at a time
            if not self._gpu_current:
                self._gpu, self._gpu_current = faiss_gpu.mirror(self.index, faiss_gpu.gpu_number(self.device)), True
            if self._gpu is None:
                return None
            try:
                return self._gpu.search(query, k)
            except RuntimeError as exc:
                log.warning("FAISS on the GPU failed (%s); searching on the CPU", str(exc).splitlines()[-1])
                self._gpu = None
                return None


def _train(index: faiss.Index, data: np.ndarray, faiss_device: str | None) -> None:
    """``index.train``, its k-means on the GPU where asked. A GPU that fails it (its
    memory taken by SAM beside it, a driver error) hands it to the CPU, said once: the
    run goes on, slower by the k-means, rather than stopping as if the data were short."""
    if faiss_gpu.wanted(faiss_device):
        try:
            with faiss_gpu.clustering_on_gpu(index, faiss_gpu.gpu_number(faiss_device)):
                index.train(data)
            return
        except RuntimeError as exc:
            log.warning("FAISS's k-means failed on the GPU (%s): training on the CPU", str(exc).splitlines()[-1])
    index.train(data)


def _train_if_needed(index: faiss.Index, store: Store, device: str | None = "cpu") -> None:
    """Train on a bounded random sample of the stored vectors (never all of them in
    memory): the size the automatic choice asks for, at most TRAIN_MAX."""
    if index.is_trained:
        return
    ids = store.segment_ids()
    ivf = ivf_of(index)
    nlist = ivf.nlist if ivf is not None else 0
    size = train_size_for(len(ids), nlist)
    sample = np.sort(np.random.default_rng(0).choice(ids, size, replace=False)) if size < len(ids) else ids
    vectors = [v for _, v in store.embeddings(sample)]
    data = np.concatenate(vectors) if vectors else np.zeros((0, index.d), np.float32)
    with _opq_codebooks_of_ours(index):
        clusters = _one_line_on_few_points(index, len(data))
        if len(data) < clusters:  # k-means cannot even start: said before FAISS says it in C++'s words
            raise ValueError(
                f"this index type trains {clusters} clusters, on at least as many vectors, and the index holds "
                f"{len(ids)}: index more photos, or let its size choose its type "
                f"(`usesearch reindex {index_flags(store.folder, store.url)} --factory auto`)"
            )
        try:
            _train(index, data, device)
        except RuntimeError as exc:
            raise ValueError(
                f"FAISS index needs training and {len(data)} vectors are not enough: "
                f"{str(exc).splitlines()[-1]}. Index more images, or use the exact factory '{DEFAULT_FACTORY}'."
            ) from None
    if ivf is not None:
        ivf.nprobe = nprobe_for(nlist)


@contextlib.contextmanager
def _opq_codebooks_of_ours(index: faiss.Index) -> Iterator[None]:
    """Within it, each OPQ rotation trains its codebooks with a PQ of ours, whose k-means
    threshold ``_one_line_on_few_points`` sets (its own PQ keeps FAISS's: 800 warning
    lines for OPQ16 on 1,024 vectors). Assigning hands the PQ to C++, which never frees
    it: after, it is taken back from the rotation (which reads it only while training)
    and freed with its last reference."""
    given = []
    for opq in opq_matrices(index):
        if opq.pq is None:
            pq = faiss.ProductQuantizer(opq.d_out, opq.M, 8)
            opq.pq = pq
            given.append((opq, pq))
    try:
        yield
    finally:
        for opq, pq in given:
            opq.pq = None
            pq.thisown = True  # type: ignore[attr-defined]


FAISS_POINTS_PER_CLUSTER = 39  # faiss's ClusteringParameters.min_points_per_centroid


def _one_line_on_few_points(index: faiss.Index, n: int) -> int:
    """Training on fewer points than FAISS asks for said in one line: FAISS prints its
    own warning from C++ for every k-means it runs (each PQ sub-quantizer too), eight
    lines or more per rebuild. Its threshold only decides that warning. Returns the
    most clusters one k-means trains (0: none), which needs as many points at least."""
    ivf = ivf_of(index)
    # (a plain PQ's codebooks too: its k-means gave FAISS's C++ error, or its warning, unsaid)
    parts = [
        p
        for p in (ivf, *product_quantizers(index), *(opq.pq for opq in opq_matrices(index)))
        if p is not None and hasattr(p, "cp")
    ]
    lists, centroids = ivf.nlist if ivf is not None else 0, max([p.ksub for p in parts if hasattr(p, "ksub")] or [0])
    clusters = max(lists, centroids)
    for part in parts:
        part.cp.min_points_per_centroid = 1
    if parts and clusters <= n < FAISS_POINTS_PER_CLUSTER * clusters:
        # (named as the factory names it: "256 clusters" for an IVF16,PQ8 read as its 16 lists)
        what = f"{lists} IVF lists" if lists >= centroids else f"PQ codebooks of {centroids} centroids"
        asks = FAISS_POINTS_PER_CLUSTER * clusters
        log.warning(
            f"training {what} on {n} vectors (FAISS asks for {asks}): coarse until the index grows (a compressed "
            "index's calibration then re-scores more candidates), or `reindex --factory auto` chooses one for this size"
        )
    return clusters if parts else 0


class BuildStopped(Exception):
    """``rebuild``'s ``stop`` was set."""


def rebuild(
    store: Store,
    dim: int,
    factory: str,
    device: str | None = "cpu",
    shard_size: int = 0,
    up_to: int | None = None,
    stop: threading.Event | None = None,
) -> Vectors:
    """A new index of the store's embeddings (those with ids up to ``up_to``): trained
    once on a bounded sample, then filled shard by shard (streamed, in id order).
    ``BuildStopped`` when ``stop`` is set before it is filled (a build in a thread, let go)."""
    index = new_index(dim, factory)
    _train_if_needed(index, store, device)
    vectors = Vectors(index, device, shard_size)
    for ids, batch in store.embeddings(up_to=up_to):
        if stop is not None and stop.is_set():
            raise BuildStopped
        vectors.add(ids, batch)
    return vectors


def reconcile(vectors: Vectors, store: Store) -> tuple[int, int]:
    """Make the index hold exactly the store's committed segments. Returns (removed, added)."""
    removed, added, _ = reconcile_all(vectors, store)
    return removed, added


def reconcile_all(vectors: Vectors, store: Store) -> tuple[int, int, int]:
    """``reconcile``, also returning the highest id the index now holds (0: none)."""
    have = vectors.ids()
    committed = store.segment_ids()
    extra = np.setdiff1d(have, committed, assume_unique=True)
    missing = np.setdiff1d(committed, have, assume_unique=True)
    vectors.remove(extra)
    if len(missing):
        _train_if_needed(vectors.index, store, vectors.device)
        for ids, batch in store.embeddings(missing):
            vectors.add(ids, batch)
    return len(extra), len(missing), int(committed.max()) if len(committed) else 0


def faiss_runtime() -> dict:
    """Which faiss this is and whether it can use a GPU here (for ``usesearch info``)."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {
        "faiss_version": faiss.__version__,
        "faiss_gpu_support": hasattr(faiss, "StandardGpuResources"),
        "faiss_gpus": gpus,
    }
