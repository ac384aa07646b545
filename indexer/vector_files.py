"""The FAISS files of an index folder: written atomically and verified on open.

The files are a cache of the store's embeddings; the database is the truth.
- A file is written atomically (temp file, fsync, rename, fsync the folder) because
  ``faiss.write_index`` truncates in place, and its SHA-256 is recorded in the store
  after each write. On open a file is refused (and the index rebuilt from the store,
  with a one-line message) when its checksum, type, metric or dimension does not
  match, so flipped bytes or a foreign FAISS file never answer queries.
- What is loaded is then reconciled with the committed segment ids (``vectors.reconcile``),
  unless the files were written at the store's current generation.
- Shard 0 is ``vectors.faiss``; shard n is ``vectors-000n.faiss`` beside it.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import logging
import re
from pathlib import Path

import faiss
import numpy as np

from usesearch.errors import DiskFullError, StaleFilesError, UsesearchError, is_disk_full
from usesearch.io.atomic import write_atomic

from . import vectors
from .catalog import index_flags
from .index_kinds import index_ids, ivf_of, new_index
from .store import Store
from .vectors import Vectors, rebuild

log = logging.getLogger(__name__)


def shard_path(path: Path, number: int) -> Path:
    """Shard 0 is ``vectors.faiss``; shard n is ``vectors-000n.faiss`` beside it."""
    return path if number == 0 else path.with_name(f"{path.stem}-{number:04d}{path.suffix}")


def shard_files(path: Path) -> list[Path]:
    """The shard files on disk, in order, stopping at the first gap."""
    files: list[Path] = []
    while shard_path(path, len(files)).exists():
        files.append(shard_path(path, len(files)))
    return files


def shard_files_on_disk(path: Path) -> dict[int, Path]:
    """Every shard file beside ``path`` by number, in order, gaps or not: those past a
    gap are not read (``shard_files``), and a write removes the ones its layout does
    not use."""
    found = {0: path} if path.exists() and not path.is_dir() else {}
    name = re.compile(rf"{re.escape(path.stem)}-(\d{{4,}}){re.escape(path.suffix)}")
    for file in path.parent.glob(f"{glob.escape(path.stem)}-*{glob.escape(path.suffix)}"):
        match = name.fullmatch(file.name)
        number = int(match[1]) if match else 0
        if number and shard_path(path, number) == file and not file.is_dir():
            found[number] = file
    return dict(sorted(found.items()))


def write_index_files(index: Vectors, path: Path, store: Store, dim: int, factory: str, *, in_sync: bool) -> Vectors:
    """Write the shards that changed (all, compacted, if the index holds stale ids)
    and record their checksums and, when ``in_sync`` (the index holds exactly the
    committed segments: not so after a commit whose vectors were never applied), the
    generation they hold. Returns the index now in use. A full disk is a
    ``DiskFullError`` naming the path; a temporary file never stays behind."""
    generation = store.generation()  # stable: the caller is the one writer
    for stale in path.parent.glob(f".{path.stem}*{path.suffix}.*.tmp"):  # a write killed past its cleanup
        stale.unlink(missing_ok=True)
    store.set_vectors_generation(None)  # until every file is written, and for good if not in sync
    if len(index.stale):
        index = rebuild(store, dim, factory, index.device, index.shard_size)
        in_sync = True
    for number in sorted(index.dirty | ({0} if not path.exists() else set())):
        _write_file(index.shards[number], shard_path(path, number), store, number)
    # Then the files of another layout (more shards), past a gap too (a deleted shard file
    # ends the run that ``shard_files`` reads, not the files after it): lowest first, so
    # that a kill leaves the run read exactly the files just written.
    for number, extra in shard_files_on_disk(path).items():
        if number >= len(index.shards):
            extra.unlink(missing_ok=True)
    index.dirty.clear()
    if in_sync:
        store.set_vectors_generation(generation)  # last: a kill before it only costs the next open a reconcile
    return index


def _write_file(index: faiss.Index, path: Path, store: Store, shard: int) -> None:
    if path.is_dir():
        raise UsesearchError(f"{path} is a folder, not a FAISS file: move it away (it is rebuilt from the database)")
    digest = hashlib.sha256()

    def write_to(tmp: Path) -> None:
        """FAISS's bytes streamed into ``tmp`` through a callback, hashed on the way
        (no second read of a file of gigabytes)."""
        failure: list[OSError] = []
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
                faiss.write_index(index, faiss.PyCallbackIOWriter(write))  # type: ignore[attr-defined]  # missing from faiss's stub
            except (RuntimeError, OSError) as exc:
                raise (failure[0] if failure else exc) from None

    try:
        write_atomic(path, write_to, sync_folder=True)
    except Exception as exc:  # noqa: BLE001 - a full disk surfaces as an OSError or in FAISS's words
        if is_disk_full(exc):
            raise DiskFullError(
                f"disk full: cannot write {path}; free space and run the command again (nothing committed was lost)"
            ) from None
        raise
    store.set_vectors_checksum(digest.hexdigest(), shard)


def kind_of(index: faiss.Index) -> tuple:
    """What a factory string fixes in an index: its classes (outside in) and, for an
    IVF, its number of lists."""
    outer = faiss.downcast_index(index)
    inner = faiss.downcast_index(outer.index) if isinstance(outer, faiss.IndexIDMap2) else None
    ivf = ivf_of(index)
    return type(outer).__name__, type(inner).__name__ if inner is not None else None, ivf.nlist if ivf else None


@functools.lru_cache(maxsize=16)
def _kind_made(dim: int, factory: str) -> tuple:
    """``kind_of`` an index of ``factory`` as read back from a file (FAISS writes a flat
    inner-product index as IndexFlatIP, which the factory builds as IndexFlat)."""
    return kind_of(faiss.deserialize_index(faiss.serialize_index(new_index(dim, factory))))


def _read_verified(
    path: Path, store: Store, dim: int, shard: int = 0, factory: str | None = None
) -> tuple[faiss.Index | None, str]:
    """The file's index when it is the one the store recorded (its checksum, and the
    kind of index ``factory`` makes: a ``reindex --factory`` killed between writing
    the files and recording their factory left files of another kind), else (None, why)."""
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
            reader = faiss.PyCallbackIOReader(f.read)  # type: ignore[attr-defined]  # missing from faiss's stub
            index = faiss.read_index(reader)
        except RuntimeError:
            return None, "FAISS cannot read it"
    if not isinstance(faiss.downcast_index(index), faiss.IndexIDMap2) and ivf_of(index) is None:
        return None, f"it holds a {type(faiss.downcast_index(index)).__name__}, not an IDMap2 or IVF index"
    if index.metric_type != faiss.METRIC_INNER_PRODUCT or index.d != dim:
        return None, f"it has metric {index.metric_type} and dimension {index.d}, not inner product over {dim}"
    if factory is not None and kind_of(index) != _kind_made(dim, factory):
        return None, f"it holds another kind of index than the recorded {factory}"
    return index, ""


def load(
    path: Path,
    store: Store,
    dim: int,
    factory: str,
    device: str | None = "cpu",
    shard_size: int = 0,
    rebuild_unverified: bool = True,
) -> tuple[Vectors, tuple[int, int]]:
    """The index for a store: its shard files when each is verified (and holds the
    ids its number says), else rebuilt from the store (or, not ``rebuild_unverified``,
    a ``StaleFilesError``: a reader meeting a file its writer has renamed into place and
    not yet recorded tries again later); then reconciled with the store. ``device`` as
    in ``faiss_gpu.wanted``."""
    if path.exists() and not path.is_file():
        raise UsesearchError(f"{path} is not a file: move it away (the vector index is rebuilt from the database)")
    try:  # a factory refused since the index was made (HNSW over PQ: FAISS builds it with L2)
        _kind_made(dim, factory)
    except ValueError as exc:
        flags = index_flags(path.parent, store.url)
        raise UsesearchError(
            f"{exc}; `usesearch reindex {flags} --factory auto` gives this index another kind"
        ) from None
    if not path.exists():
        if store.vectors_checksum(0) is not None:  # (a new index has none: nothing to say)
            log.warning("%s is missing (the database recorded it); its segments are added from the database", path.name)
        empty = Vectors(new_index(dim, factory), device, shard_size)
        return empty, vectors.reconcile(empty, store)
    # Read before the files: a commit or a write landing while they load changes one of them.
    written_at = (store.generation(), store.vectors_generation())
    shards, why = [], ""
    for number, file in enumerate(shard_files(path)):
        index, why = _read_verified(file, store, dim, number, factory)
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
    if not covered and not shard_path(path, len(shards)).exists() and store.vectors_checksum(len(shards)) is not None:
        log.warning(
            "%s is missing (the database recorded it); its segments are added from the database",
            shard_path(path, len(shards)).name,
        )
    if len(shards) < len(shard_files(path)) or not shards:
        if not rebuild_unverified:
            raise StaleFilesError(f"{path}: {why}")
        relaid = why.endswith("another shard layout")  # a --shard-size given: no fault in the files
        log.warning(
            "%s %s; rebuilding it from the database (`usesearch reindex %s` writes it back, so that later opens "
            "need not)",
            path,
            "is laid out in other shards than the index's (--shard-size)"
            if relaid
            else f"does not match the database ({why})",
            index_flags(path.parent, store.url),
        )
        rebuilt = rebuild(store, dim, factory, device, shard_size)
        return rebuilt, (0, rebuilt.ntotal)
    loaded = Vectors(shards, device, shard_size)
    loaded.dirty.clear()  # as on disk
    if covered and written_at[0] == written_at[1] and (store.generation(), store.vectors_generation()) == written_at:
        # Verified files written at this very generation, which nothing changed since:
        # comparing every id with the store (17 s at 10M segments) would find nothing.
        return loaded, (0, 0)
    return loaded, vectors.reconcile(loaded, store)
