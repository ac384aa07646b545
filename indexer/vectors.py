"""FAISS vectors keyed by segment id, kept consistent with the store.

The FAISS file is a cache of the store's embeddings; the database is the truth.
- It is written atomically (temp file, fsync, rename, fsync the folder) because
  ``faiss.write_index`` truncates in place, and its SHA-256 is recorded in the store
  after each write. On open the file is refused (and rebuilt from the store, with a
  one-line message) when its checksum, type, metric or dimension does not match, so
  flipped bytes or a foreign FAISS file never answer queries.
- On open it is reconciled with the committed segment ids: ids the store does not
  have (written just before a crash) are removed, committed ids it lacks are added
  from the stored embeddings. So a query never sees shifted, missing or
  uncommitted ids.
- Index types without ``remove_ids`` (HNSW) keep removed ids as *stale*: they are
  excluded from every search by an ``IDSelector`` until the next rebuild, which
  happens whenever the file is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import faiss
import numpy as np

from usesearch.errors import DiskFullError, UsesearchError, is_disk_full

from . import faiss_gpu
from .index_choice import nprobe_for, train_size_for
from .store import Store

DEFAULT_FACTORY = "IDMap2,Flat"  # exact inner product over unit vectors = cosine
log = logging.getLogger(__name__)


def new_index(dim: int, factory: str) -> faiss.Index:
    # IVF indexes keep the segment ids in their inverted lists; anything else is
    # wrapped in an IDMap2 (which costs a reverse map, ~50 bytes per vector).
    if not factory.startswith("IDMap") and "IVF" not in factory:
        factory = "IDMap2," + factory
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {str(exc).splitlines()[-1]}") from None


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)  # also behind an OPQ pre-transform
    except RuntimeError:
        return None


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every segment id the index holds: an IDMap2's id list, or an IVF's lists."""
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIDMap2):
        return faiss.vector_to_array(outer.id_map).astype(np.int64)
    invlists = _ivf(index).invlists
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
        for i in range(invlists.nlist)
        if invlists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _search_params(
    index: faiss.Index, selector: faiss.IDSelector | None, nprobe: int | None = None
) -> faiss.SearchParameters:
    """Search parameters of the right class for the wrapped index (IVF and HNSW check
    the type), carrying its current nprobe / efSearch and the selector."""
    outer = faiss.downcast_index(index)
    inner = faiss.downcast_index(outer.index) if isinstance(outer, faiss.IndexIDMap2) else outer
    ivf = _ivf(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = min(ivf.nlist, nprobe) if nprobe else ivf.nprobe
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = inner.hnsw.efSearch
    else:
        params = faiss.SearchParameters()
    params.sel = selector
    return params


class Vectors:
    """One store's FAISS index: one or more shards (an ``IDMap2``, or an IVF with its
    own ids, each), plus the stale ids of index types that cannot remove vectors.

    With ``shard_size`` > 0, segment id i lives in shard (i - 1) // shard_size. Every
    shard is a copy of one trained empty index (the same coarse quantizer and
    codebook), so scores compare across shards and a search of all of them, merged
    by score, answers exactly as one index with the same contents. New segments
    land in the last shard, so a write rewrites only the shards that changed."""

    def __init__(self, index: faiss.Index | list[faiss.Index], device: str | None = "cpu", shard_size: int = 0):
        self.shards = list(index) if isinstance(index, list) else [index]
        self.shard_size = shard_size
        self.stale = np.zeros(0, np.int64)
        self.device = device
        self.dirty = set(range(len(self.shards)))  # shards changed since they were last written
        self._gpu: faiss.Index | None = None  # mirror for unfiltered searches (faiss_gpu.py)
        self._gpu_current = False

    @property
    def index(self) -> faiss.Index:
        """The first shard: the index type, its training and its parameters."""
        return self.shards[0]

    @property
    def ntotal(self) -> int:
        return sum(int(shard.ntotal) for shard in self.shards) - len(self.stale)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def exact(self) -> bool:
        """Scores are exact inner products (a flat index), not approximations that
        must be re-scored."""
        outer = faiss.downcast_index(self.index)
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
        while len(self.shards) <= number:  # a new shard: the trained index, empty
            fresh = faiss.clone_index(self.shards[0])
            fresh.reset()
            self.shards.append(fresh)
            self.dirty.add(len(self.shards) - 1)
        return self.shards[number]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = np.asarray(ids, np.int64), np.ascontiguousarray(vectors, np.float32)
        for number, rows in self._by_shard(ids):
            self._shard(number).add_with_ids(vectors[rows], ids[rows])
            self.dirty.add(number)
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
        keep = []  # the selectors must outlive the search call
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.asarray(allowed, np.int64))
            keep.append(selector)
        dropped = np.union1d(self.stale, np.asarray(list(excluded), np.int64))
        if len(dropped):
            batch = faiss.IDSelectorBatch(dropped)
            not_dropped = faiss.IDSelectorNot(batch)
            keep += [batch, not_dropped]
            selector = not_dropped if selector is None else faiss.IDSelectorAnd(selector, not_dropped)
            keep.append(selector)
        if selector is None and nprobe is None and len(self.shards) == 1:
            scores, ids = self._unfiltered().search(query, k)
            found = ids[0] >= 0
            return scores[0][found], ids[0][found]
        params = _search_params(self.index, selector, nprobe)
        parts = [shard.search(query, min(k, int(shard.ntotal)), params=params) for shard in self.shards if shard.ntotal]
        scores = np.concatenate([p[0][0] for p in parts]) if parts else np.zeros(0, np.float32)
        ids = np.concatenate([p[1][0] for p in parts]) if parts else np.zeros(0, np.int64)
        found = ids >= 0
        scores, ids = scores[found], ids[found]
        order = np.lexsort((ids, -scores))[:k]  # by score; ties: the lower id first
        return scores[order], ids[order]

    def _unfiltered(self) -> faiss.Index:
        """The GPU mirror when there is one (refreshed after changes), else the CPU index."""
        if not faiss_gpu.wanted(self.device):
            return self.index
        if not self._gpu_current:
            self._gpu, self._gpu_current = faiss_gpu.mirror(self.index), True
        return self._gpu if self._gpu is not None else self.index


def _train_if_needed(index: faiss.Index, store: Store, device: str | None = "cpu") -> None:
    """Train on a bounded random sample of the stored vectors (never all of them in
    memory): the size the automatic choice asks for, at most TRAIN_MAX."""
    if index.is_trained:
        return
    ids = store.segment_ids()
    ivf = _ivf(index)
    nlist = ivf.nlist if ivf is not None else 0
    size = train_size_for(len(ids), nlist)
    sample = np.sort(np.random.default_rng(0).choice(ids, size, replace=False)) if size < len(ids) else ids
    vectors = [v for _, v in store.embeddings(sample)]
    data = np.concatenate(vectors) if vectors else np.zeros((0, index.d), np.float32)
    if faiss_gpu.wanted(device):
        faiss_gpu.train_on_gpu(index)
    try:
        index.train(data)
    except RuntimeError as exc:
        raise ValueError(
            f"FAISS index needs training and {len(data)} vectors are not enough: "
            f"{str(exc).splitlines()[-1]}. Index more images, or use the exact factory '{DEFAULT_FACTORY}'."
        ) from None
    if ivf is not None:
        ivf.nprobe = nprobe_for(nlist)


def rebuild(store: Store, dim: int, factory: str, device: str | None = "cpu", shard_size: int = 0) -> Vectors:
    """A new index of the store's embeddings: trained once on a bounded sample, then
    filled shard by shard (streamed, in id order)."""
    index = new_index(dim, factory)
    _train_if_needed(index, store, device)
    vectors = Vectors(index, device, shard_size)
    for ids, batch in store.embeddings():
        vectors.add(ids, batch)
    return vectors


def shard_path(path: Path, number: int) -> Path:
    """Shard 0 is ``vectors.faiss``; shard n is ``vectors-000n.faiss`` beside it."""
    return path if number == 0 else path.with_name(f"{path.stem}-{number:04d}{path.suffix}")


def shard_files(path: Path) -> list[Path]:
    """The shard files on disk, in order, stopping at the first gap."""
    files = []
    while shard_path(path, len(files)).exists():
        files.append(shard_path(path, len(files)))
    return files


def reconcile(vectors: Vectors, store: Store) -> tuple[int, int]:
    """Make the index hold exactly the store's committed segments. Returns (removed, added)."""
    have = vectors.ids()
    committed = store.segment_ids()
    extra = np.setdiff1d(have, committed, assume_unique=True)
    missing = np.setdiff1d(committed, have, assume_unique=True)
    vectors.remove(extra)
    if len(missing):
        _train_if_needed(vectors.index, store, vectors.device)
        for ids, batch in store.embeddings(missing):
            vectors.add(ids, batch)
    return len(extra), len(missing)


def write_atomic(vectors: Vectors, path: Path, store: Store, dim: int, factory: str, *, in_sync: bool) -> Vectors:
    """Write the shards that changed (all, compacted, if the index holds stale ids)
    and record their checksums and, when ``in_sync`` (the index holds exactly the
    committed segments: not so after a commit whose vectors were never applied), the
    generation they hold. Returns the index now in use. A full disk is a
    ``DiskFullError`` naming the path; a temporary file never stays behind."""
    generation = store.generation()  # stable: the caller is the one writer
    store.set_vectors_generation(None)  # until every file is written, and for good if not in sync
    if len(vectors.stale):
        vectors = rebuild(store, dim, factory, vectors.device, vectors.shard_size)
        in_sync = True
    for number in sorted(vectors.dirty | ({0} if not path.exists() else set())):
        _write_file(vectors.shards[number], shard_path(path, number), store, number)
    for extra in shard_files(path)[len(vectors.shards) :]:  # left by an index with more shards
        extra.unlink()
    vectors.dirty.clear()
    if in_sync:
        store.set_vectors_generation(generation)  # last: a kill before it only costs the next open a reconcile
    return vectors


def _write_file(index: faiss.Index, path: Path, store: Store, shard: int) -> None:
    if path.is_dir():
        raise UsesearchError(f"{path} is a folder, not a FAISS file: move it away (it is rebuilt from the database)")
    tmp = path.with_name(path.name + ".tmp")
    digest = hashlib.sha256()
    failure: list[BaseException] = []
    try:
        with open(tmp, "wb") as f:

            def write(chunk: bytes) -> int:
                try:
                    f.write(chunk)
                except OSError as exc:  # keep it: FAISS would replace it by a generic message
                    failure.append(exc)
                    raise
                digest.update(chunk)
                return len(chunk)

            try:
                faiss.write_index(index, faiss.PyCallbackIOWriter(write))
                f.flush()
            except (RuntimeError, OSError) as exc:
                raise (failure[0] if failure else exc) from None
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(
                f"disk full: cannot write {path}; free space and run the command again (nothing committed was lost)"
            ) from None
        raise
    store.set_vectors_checksum(digest.hexdigest(), shard)


def _read_verified(path: Path, store: Store, dim: int, shard: int = 0) -> tuple[faiss.Index | None, str]:
    """The file's index when it is the one the store recorded, else (None, why)."""
    with open(path, "rb") as f:
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
        recorded = store.vectors_checksum(shard)
        if recorded is None:
            return None, "no checksum is recorded for it (made by an older usesearch, or never finished)"
        if digest.hexdigest() != recorded:
            recorded = store.vectors_checksum(shard)  # a writer may have replaced it meanwhile
            if digest.hexdigest() != recorded:
                return None, "its checksum does not match the one the database recorded"
        f.seek(0)
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
        except RuntimeError:
            return None, "FAISS cannot read it"
    if not isinstance(faiss.downcast_index(index), faiss.IndexIDMap2) and _ivf(index) is None:
        return None, f"it holds a {type(faiss.downcast_index(index)).__name__}, not an IDMap2 or IVF index"
    if index.metric_type != faiss.METRIC_INNER_PRODUCT or index.d != dim:
        return None, f"it has metric {index.metric_type} and dimension {index.d}, not inner product over {dim}"
    return index, ""


def load(
    path: Path, store: Store, dim: int, factory: str, device: str | None = "cpu", shard_size: int = 0
) -> tuple[Vectors, tuple[int, int]]:
    """The index for a store: its shard files when each is verified (and holds the
    ids its number says), else rebuilt from the store; then reconciled with the
    store. ``device`` as in ``faiss_gpu.wanted``."""
    if path.exists() and not path.is_file():
        raise UsesearchError(f"{path} is not a file: move it away (the vector index is rebuilt from the database)")
    if not path.exists():
        vectors = Vectors(new_index(dim, factory), device, shard_size)
        return vectors, reconcile(vectors, store)
    # Read before the files: a commit or a write landing while they load changes one of them.
    written_at = (store.generation(), store.vectors_generation())
    shards, why = [], ""
    for number, file in enumerate(shard_files(path)):
        index, why = _read_verified(file, store, dim, number)
        if index is None:
            why = f"{file.name}: {why}"
            break
        ids = index_ids(index)
        if (number and not shard_size) or (shard_size and len(ids) and bool(np.any((ids - 1) // shard_size != number))):
            index, why = None, f"{file.name} holds segments of another shard layout"
            break
        shards.append(index)
    # The shard files are read as a contiguous run: a deleted (or not yet written) one
    # ends it, and the shards after it would silently be missing from every search.
    # Their segments are then added from the store by the reconcile below.
    last = store.max_segment_id()
    covered = not (shards and shard_size and last and (last - 1) // shard_size >= len(shards))
    if not covered and store.vectors_checksum(len(shards)) is not None:
        log.warning(
            "%s is missing (the database recorded it); its segments are added from the database",
            shard_path(path, len(shards)).name,
        )
    if len(shards) < len(shard_files(path)) or not shards:
        log.warning("%s does not match the database (%s); rebuilding it from the database", path, why)
        vectors = rebuild(store, dim, factory, device, shard_size)
        return vectors, (0, vectors.ntotal)
    vectors = Vectors(shards, device, shard_size)
    vectors.dirty.clear()  # as on disk
    if covered and written_at[0] == written_at[1] and (store.generation(), store.vectors_generation()) == written_at:
        # Verified files written at this very generation, which nothing changed since:
        # comparing every id with the store (17 s at 10M segments) would find nothing.
        return vectors, (0, 0)
    return vectors, reconcile(vectors, store)


def faiss_runtime() -> dict:
    """Which faiss this is and whether it can use a GPU here (for ``usesearch info``)."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {
        "faiss_version": faiss.__version__,
        "faiss_gpu_support": hasattr(faiss, "StandardGpuResources"),
        "faiss_gpus": gpus,
    }
