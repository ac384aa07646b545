"""What a calibration measures recall against: the queries (stored segments as image
queries, typed queries by kind), their exact top ``K`` over the stored float16 rows,
and the recall curve: for each ``nprobe`` one FAISS search gives the recall at every
number of candidates re-scored, since re-scoring is exact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np

from usesearch import tasks

from ..store import Store
from ..vectors import Vectors, ranked, search_params

K = 10
IMAGE_QUERIES = 100
SEED = 0
# COCO's 80 classes: nouns of everyday photos, embedded through the model's own query templates.
CLASSES = tuple((Path(tasks.__file__).parent / "data" / "coco_things_80.txt").read_text().strip().split("\n"))


def query_vectors(
    store: Store,
    model,
    image_queries: int = IMAGE_QUERIES,
    seed: int = SEED,
    given: Mapping[str, np.ndarray] | None = None,
):
    """(vectors [m, d], ids to exclude [m] (0: none), kind of each [m]): the
    ``given`` typed queries by kind (else the model's vocabulary as "text" where
    ``model``), then ``image_queries`` stored segments as "image"."""
    ids = store.segment_ids()
    dim = store.files().dim
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(ids, min(image_queries, len(ids)), replace=False)) if len(ids) else ids
    typed = dict(given or {})
    if "image" in typed:
        raise ValueError('"image" queries are the stored segments calibration picks; name given kinds otherwise')
    if not typed and model is not None:
        typed["text"] = np.asarray(model.embed_text(list(CLASSES)), np.float32)
    parts, excluded, kinds = [], [], []
    for kind, given_vectors in typed.items():
        vectors = np.asarray(given_vectors, np.float32).reshape(-1, dim)
        parts.append(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
        excluded.append(np.zeros(len(vectors), np.int64))
        kinds += [kind] * len(vectors)
    for batch_ids, batch in store.embeddings(picked):
        parts.append(batch)
        excluded.append(batch_ids)
        kinds += ["image"] * len(batch_ids)
    vectors = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
    return vectors, np.concatenate(excluded) if excluded else np.zeros(0, np.int64), np.array(kinds)


def exact_top(store: Store, vectors: np.ndarray, excluded: np.ndarray, k: int = K) -> np.ndarray:
    """[m, k] ids of each query's exact top ``k`` over the stored float16 rows (as
    the search re-scores them), excluding its own; one streamed pass over the
    embedding files in blocks, merged by FAISS's ``ResultHeap``."""
    heap = faiss.ResultHeap(len(vectors), k, keep_max=True)
    for ids, batch in store.embeddings():
        scores = vectors @ batch.T  # [m, b]
        scores[excluded[:, None] == ids[None, :]] = -np.inf
        if scores.shape[1] > k:  # each block's own top k first: the heap then sees [m, k], not [m, b]
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, block_ids = np.take_along_axis(scores, top, 1), ids[top]
        else:
            block_ids = np.broadcast_to(ids, scores.shape)
        heap.add_result(np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(block_ids, np.int64))
    heap.finalize()
    return heap.I


def candidates(index: Vectors, vectors: np.ndarray, excluded: np.ndarray, fetch: int, nprobe: int) -> list:
    """Each query's first ``fetch`` FAISS candidates at ``nprobe`` (its own id left
    out), as the search path gets them: all queries in one call per shard."""
    params = search_params(index.index, None, nprobe)
    # A shard emptied by ``prune`` is left out, as the search leaves it (FAISS refuses k = 0).
    parts = [
        shard.search(vectors, min(fetch + 1, shard.ntotal), params=params) for shard in index.shards if shard.ntotal
    ]
    out = []
    for i, own in enumerate(excluded):
        scores = np.concatenate([part[0][i] for part in parts])
        ids = np.concatenate([part[1][i] for part in parts])
        keep = (ids >= 0) & (ids != own)
        out.append(ranked(scores[keep], ids[keep], fetch)[1])
    return out


def recalls(found: Sequence[set[int]] | list[list[int]], truth: np.ndarray) -> np.ndarray:
    return np.array([len(set(f) & set(t.tolist())) / max(1, len(t)) for f, t in zip(found, truth)])


def by_kind(values: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    return {kind: round(float(values[kinds == kind].mean()), 4) for kind in dict.fromkeys(kinds.tolist())}


def headline(values: np.ndarray, kinds: np.ndarray) -> float:
    """The typed queries' mean recall (every kind but "image", pooled), else the image queries'."""
    typed = kinds != "image"
    chosen = values[typed] if typed.any() else values
    return round(float(chosen.mean()), 4) if len(chosen) else 0.0
