"""What ``SegmentIndex.stats`` reports: counts, model, index type and sizes, and why
the index is of its type and what recall it gives."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from usesearch.errors import first_line

from . import faiss_gpu, fragments, index_choice, index_kinds, vector_files, vectors
from .calibration import size_ratio
from .folder import DB_FILE, FAISS_FILE, head_to_load
from .leftovers import embedding_leftovers, files_gone

# ``index`` below is a ``search.SegmentIndex`` (not imported: search.py calls this module).
SegmentIndex = Any


def stats(index: SegmentIndex, check_files: bool = False) -> dict[str, Any]:
    """Counts, model, index type and sizes. ``check_files`` also counts the image
    files gone since indexing (``files_gone``: a stat per image, or per image of a
    sample of ``files_checked`` past ``leftovers.GONE_CHECKED``), the embedding
    bytes no segment refers to (``bytes_embeddings_dead``: ``prune`` gives them
    back), the embedding files gone or cut short (``embeddings_lost``) and the FAISS
    shard files past a missing one, which no open reads (``faiss_files_unread``):
    ``usesearch info`` asks for them, the web page's every load does not."""
    return catalog_stats(
        index.store,
        index.db_dir,
        check_files,
        {
            "index_choice": _index_explanation(index),
            "recall": _recall_explanation(index),
            "calibration": asdict(index.calibration) if index.calibration else None,  # with its curve
            "dim": index.info.dim,
            "vectors": int(index.index.ntotal),
        },
        {
            "location_map_bytes": index._locations.nbytes if index._locations is not None else 0,  # (a server's)
            "shards": len(index.index.shards),
        },
        {"faiss_device": index.index.device, "faiss_note": faiss_gpu.note(index._faiss_device)},
    )


def unloaded_stats(store, db_dir: Path, why: Exception) -> dict[str, Any]:
    """``stats`` of an index whose FAISS index cannot be loaded (its files must be
    rebuilt from embedding files that are gone or cut short): what the catalog and
    the folder's files tell, so ``info`` still shows the damage and its repair."""
    return catalog_stats(
        store,
        db_dir,
        True,
        {"dim": store.info().dim, "vectors": None},
        {},
        {"faiss_device": None, "faiss_note": f"not loaded: {_rebuild_needs(why)}"},
    )


def _rebuild_needs(why: Exception) -> str:
    return f"its rebuild reads embedding files gone or cut short ({first_line(why).split(': `')[0]})"


def catalog_stats(
    store, db_dir: Path, check_files: bool, searched: dict, held: dict, faiss_where: dict
) -> dict[str, Any]:
    """The parts of ``stats`` told by the catalog and the files on disk, around the
    loaded index's parts (``searched``: its type and size; ``held``: its memory;
    ``faiss_where``: its device), in the order ``info`` prints them."""

    def size(name: str) -> int:
        p = db_dir / name
        return p.stat().st_size if p.is_file() else 0

    info = store.info()
    faiss_files = vector_files.shard_files_on_disk(db_dir / FAISS_FILE)
    gone = {}
    if check_files:
        dead, lost = embedding_leftovers(store)
        found = files_gone(store)
        missing, checked = found.number, found.checked
        gone = {
            "files_gone": missing,  # estimated where fewer than every image were checked
            "files_held": found.held,  # their access refused: kept by prune until --force
            "files_checked": checked,
            "bytes_embeddings_dead": dead,
            "embeddings_lost": lost,  # file -> segments: `index --repair`
            "bytes_fragments": fragments.left_over(db_dir),  # Ray runs cut short: `prune` removes them
            # Past a missing shard file (its segments are read from the database): the next write
            # (`index`, `prune`, `reindex`) rewrites those its layout uses and removes the others.
            "faiss_files_unread": max(0, len(faiss_files) - len(vector_files.shard_files(db_dir / FAISS_FILE))),
        }
    return {
        **store.counts(),
        "preset": info.preset,
        "embedder": info.embedder,
        "fingerprint": info.fingerprint,
        "head": info.model_head,  # as given when the index was built
        "head_loaded": head_to_load(db_dir, info.model_head),  # what searches load: the folder's copy where it has one
        "masker": info.masker,
        "masker_params": info.masker_params,
        "factory": info.factory,
        "index_mode": info.index_mode,
        **searched,
        "bytes_db": size(DB_FILE) + size(DB_FILE + "-wal") if _on_sqlite(store) else _server_bytes(store),
        "bytes_faiss": sum(_size(p) for p in faiss_files.values()),  # read or not (``faiss_files_unread``)
        **held,
        **gone,  # since indexing: `usesearch prune` removes them
        "shard_size": info.shard_size,
        "bytes_embeddings": store.files().bytes_on_disk(),
        **vectors.faiss_runtime(),
        **faiss_where,
    }


def _size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a writer removed it meanwhile
        return 0


def _recall_explanation(index: SegmentIndex) -> str:
    if index.index.exact:
        return "1.00: exact search (every segment compared)"
    if index.calibration is None:
        ivf = index_kinds.ivf_of(index.index.index)
        if ivf is None:  # HNSW and other graphs: calibration tunes an IVF's nprobe and rerank
            return f"not measured ({index.info.factory} is approximate; calibration measures IVF indexes only)"
        return (
            f"not measured (nprobe {ivf.nprobe}, rerank {index_choice.rerank_candidates(10)}"
            "): `usesearch calibrate` measures it"
        )
    return index.calibration.describe() + _grown_since(index.calibration.segments, int(index.index.ntotal))


GROWN_SAID = 1.25  # an index this much larger (or smaller) than when measured: `info` says its recall may have moved


def _grown_since(measured: int, now: int) -> str:
    """Where the index has grown (or shrunk) a quarter since its recall was measured: a
    recall 0.99 measured at 14k segments was 0.93 at 22k, and `info` went on showing 0.99
    (an indexing run measures again only at twice or half the size)."""
    if size_ratio(now, measured) < GROWN_SAID:
        return ""
    change = f"{(now - measured) / max(1, measured):+.0%}"
    return (
        f"; {now:,} segments now ({change} since): its recall may have moved; `usesearch calibrate` measures it "
        "again (an indexing run does at twice or half the size)"
    )


def _index_explanation(index: SegmentIndex) -> str:
    n = int(index.index.ntotal)
    if index.info.index_mode == "fixed":
        return (
            f"{index.info.factory}: chosen with --factory (automatic choice off; `reindex --factory auto` turns it on)"
        )
    choice = index_choice.choose(n, index.info.dim, faiss_gpu.wanted(index.index.device))
    if choice.factory == index.info.factory:
        return choice.describe(n, index.info.dim)
    return (
        f"{index.info.factory}: chosen for a collection of another size, or for another device; now {choice.factory} "
        f"would be ({choice.reason})"
    )


def _on_sqlite(store) -> bool:
    return store.engine.dialect.name == "sqlite"


def _server_bytes(store) -> int | None:
    """The catalog's database on its server, as PostgreSQL counts it (None: not told)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with store.sessions() as s:
            return int(s.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    except SQLAlchemyError:
        return None
