"""What ``SegmentIndex.stats`` reports: counts, model, index type and sizes, and why
the index is of its type and what recall it gives."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from . import faiss_gpu, fragments, index_choice, index_kinds, vector_files, vectors
from .folder import DB_FILE, FAISS_FILE
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

    def size(name: str) -> int:
        p = index.db_dir / name
        return p.stat().st_size if p.is_file() else 0

    faiss_files = vector_files.shard_files_on_disk(index.db_dir / FAISS_FILE)
    gone = {}
    if check_files:
        dead, lost = embedding_leftovers(index.store)
        missing, checked, _, _ = files_gone(index.store)
        gone = {
            "files_gone": missing,  # estimated where fewer than every image were checked
            "files_checked": checked,
            "bytes_embeddings_dead": dead,
            "embeddings_lost": lost,  # file -> segments: `index --repair`
            "bytes_fragments": fragments.left_over(index.db_dir),  # Ray runs cut short: `prune` removes them
            # Past a missing shard file (its segments are read from the database): the next write
            # (`index`, `prune`, `reindex`) rewrites those its layout uses and removes the others.
            "faiss_files_unread": max(0, len(faiss_files) - len(vector_files.shard_files(index.db_dir / FAISS_FILE))),
        }
    return {
        **index.store.counts(),
        "preset": index.info.preset,
        "embedder": index.info.embedder,
        "fingerprint": index.info.fingerprint,
        "head": index.info.model_head,
        "masker": index.info.masker,
        "masker_params": index.info.masker_params,
        "factory": index.info.factory,
        "index_mode": index.info.index_mode,
        "index_choice": _index_explanation(index),
        "recall": _recall_explanation(index),
        "calibration": asdict(index.calibration) if index.calibration else None,  # with its curve
        "dim": index.info.dim,
        "vectors": int(index.index.ntotal),
        "bytes_db": size(DB_FILE) + size(DB_FILE + "-wal") if _on_sqlite(index) else _server_bytes(index),
        "bytes_faiss": sum(_size(p) for p in faiss_files.values()),  # read or not (``faiss_files_unread``)
        "location_map_bytes": index._locations.nbytes if index._locations is not None else 0,  # (a server's)
        "shards": len(index.index.shards),
        **gone,  # since indexing: `usesearch prune` removes them
        "shard_size": index.info.shard_size,
        "bytes_embeddings": index.store.files().bytes_on_disk(),
        **vectors.faiss_runtime(),
        "faiss_device": index.index.device,
        "faiss_note": faiss_gpu.note(index._faiss_device),
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
    return index.calibration.describe()


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
        f"{index.info.factory}: chosen when the collection was smaller; now {choice.factory} would be ({choice.reason})"
    )


def _on_sqlite(index: SegmentIndex) -> bool:
    return index.store.engine.dialect.name == "sqlite"


def _server_bytes(index: SegmentIndex) -> int | None:
    """The catalog's database on its server, as PostgreSQL counts it (None: not told)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with index.store.sessions() as s:
            return int(s.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    except SQLAlchemyError:
        return None
