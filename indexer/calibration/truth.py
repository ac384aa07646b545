"""What a calibration measures recall against: the queries (stored segments as image
queries, typed queries by kind), their exact top ``K`` over the stored float16 rows,
and the recall curve: for each ``nprobe`` one FAISS search gives the recall at every
number of candidates re-scored, since re-scoring is exact."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    for batch_ids, batch in store.embeddings(picked):  # float16 rows, ~1e-5 off unit: as a search takes them
        batch = np.asarray(batch, np.float64)
        parts.append(batch / np.maximum(np.linalg.norm(batch, axis=1, keepdims=True), 1e-12))
        excluded.append(batch_ids)
        kinds += ["image"] * len(batch_ids)
    vectors = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
    return vectors, np.concatenate(excluded) if excluded else np.zeros(0, np.int64), np.array(kinds)


# Scores this close to a query's K-th best are ties: equal vectors (a photo stored twice,
# a repeated pattern) score alike up to the summation order's rounding (~1e-7 at 768-d),
# and a search that returns one tied segment for another is as right as the exact list.
TIE = 1e-5


@dataclass
class Truth:
    """Each query's exact answer, ties at the K-th place kept: ``above`` the segments
    scoring above its K-th best score (every right answer holds them), ``tied`` those
    within ``TIE`` of it (any of them fill the rest; those among its best ``4K``),
    ``need`` how many a right answer holds (K, or fewer where the index has fewer)."""

    above: list[set[int]]
    tied: list[set[int]]
    need: list[int]
    kth: list[float]  # the K-th best score


def exact_top(store: Store, vectors: np.ndarray, excluded: np.ndarray, k: int = K) -> Truth:
    """Each query's exact top ``k`` over the stored float16 rows (as the search
    re-scores them), excluding its own, with the ties at its ``k``-th place (among its
    top ``4k``); one streamed pass over the embedding files in blocks, merged by FAISS's
    ``ResultHeap``."""
    keep = 4 * k  # room for the ties at the k-th place
    heap = faiss.ResultHeap(len(vectors), keep, keep_max=True)
    for ids, batch in store.embeddings():
        scores = vectors @ batch.T  # [m, b]
        scores[excluded[:, None] == ids[None, :]] = -np.inf
        if scores.shape[1] > keep:  # each block's own top first: the heap then sees [m, keep], not [m, b]
            top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
            scores, block_ids = np.take_along_axis(scores, top, 1), ids[top]
        else:
            block_ids = np.broadcast_to(ids, scores.shape)
        heap.add_result(np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(block_ids, np.int64))
    heap.finalize()
    truth = Truth([], [], [], [])
    for scores, ids in zip(heap.D, heap.I):
        valid = (ids >= 0) & np.isfinite(scores)
        scores, ids = scores[valid], ids[valid]
        need = min(k, len(ids))
        kth = scores[need - 1] if need else np.inf
        truth.above.append(set(ids[scores > kth + TIE].tolist()))
        truth.tied.append(set(ids[np.abs(scores - kth) <= TIE].tolist()))
        truth.need.append(need)
        truth.kth.append(float(kth))
    # A query whose kept best are tied to the last (a group of equal vectors larger than
    # them): every tied segment, in a second pass for those queries alone.
    wide = [i for i, need in enumerate(truth.need) if need and heap.D[i, -1] >= truth.kth[i] - TIE]
    if wide:
        kth = np.array([truth.kth[i] for i in wide], np.float32)[:, None]
        for ids, batch in store.embeddings():
            scores = vectors[wide] @ batch.T
            scores[excluded[wide][:, None] == ids[None, :]] = -np.inf
            for row, col in zip(*np.nonzero(np.abs(scores - kth) <= TIE)):
                truth.tied[wide[row]].add(int(ids[col]))
    return truth


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


def recalls(found: Sequence[Iterable[int]], truth: Truth) -> np.ndarray:
    """Each query's share of a right answer found: every segment above its K-th score
    that ``found`` holds, and as many of those tied at the K-th place as a right answer
    still needs. ``found``: each query's segment ids, or ids -> exact scores (the search
    path's hits: then a hit within ``TIE`` of the K-th score is tied, kept or not)."""
    out = []
    for f, above, tied, need, kth in zip(found, truth.above, truth.tied, truth.need, truth.kth):
        ids = set(f)
        if isinstance(f, Mapping):
            tied = tied | {i for i, score in f.items() if abs(score - kth) <= TIE and i not in above}
        have = len(ids & above) + min(need - len(above), len(ids & tied))
        out.append(have / need if need else 1.0)  # (nothing to find: nothing missed)
    return np.array(out)


def by_kind(values: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    return {kind: round(float(values[kinds == kind].mean()), 4) for kind in dict.fromkeys(kinds.tolist())}


def headline(values: np.ndarray, kinds: np.ndarray) -> float:
    """The typed queries' mean recall (every kind but "image", pooled), else the image queries'."""
    typed = kinds != "image"
    chosen = values[typed] if typed.any() else values
    return round(float(chosen.mean()), 4) if len(chosen) else 0.0
