"""Leaks between splits: the same photo in two splits (one file, or copies with the
same content hash), and near-duplicate content (re-encoded, resized, cropped copies)
found as annotations of different splits whose embeddings are nearly equal, grouped
by pair of photos.

The near-duplicate search indexes every split but the largest in FAISS (an inverted
file of float16 rows past ``EXACT_UP_TO``, whose probed lists hold a near-duplicate's
neighbours: they are far closer than anything else) and asks it for each annotation's
nearest ones, so the largest split is streamed past it, never held."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import faiss
import numpy as np

NEAR_DUPLICATE = 0.97  # cosine at which two annotations are taken for the same content
PAIR_MIN_SCORE = 0.5  # a pair of photos listed as a leak: half the smaller one's annotations matched, or more
NEIGHBOURS = 8  # asked per annotation: its own split's copies may come first
EXACT_UP_TO = 5_000  # base rows searched exactly; past this an inverted file
NPROBE = 16
# k-means of the lists: faiss's own minimum of rows per list (fewer, and faiss prints a
# warning past 400k base rows), and 10 rounds, not 25: a near-duplicate sits on top of its
# original, so the lists need not be good clusters, only a partition (at 200k base rows
# training took 33 s, now 16 s; near-duplicates planted at 0.97 to 0.995: all found either way).
ROWS_PER_LIST = 39
KMEANS_ROUNDS = 10


def exact_groups(image_hashes: Mapping[int, str | None], image_splits: dict[int, set[str]]) -> list[dict]:
    """Photos with the same content whose annotations lie in two splits or more: one
    file named in two COCO files, or copies of it (the same SHA-256) under other names."""
    by_content: dict[str, list[int]] = defaultdict(list)
    for image_id, sha in image_hashes.items():
        by_content[sha or f"image-{image_id}"].append(image_id)
    groups = []
    for images in by_content.values():
        splits = set().union(*(image_splits.get(i, set()) for i in images))
        if len(splits) > 1:
            groups.append({"images": sorted(images), "splits": sorted(splits), "kind": "same content", "score": 1.0})
    return sorted(groups, key=lambda g: g["images"])


def _lists(rows: int) -> int:
    return int(min(max(64, 4 * np.sqrt(rows)), rows // ROWS_PER_LIST))


def base_index(dim: int, rows: int, seed: int = 0) -> faiss.Index:
    """An empty inner-product index for ``rows`` base annotations (to be trained where
    it is an inverted file, on ``training_rows(rows)`` of them)."""
    if rows <= EXACT_UP_TO:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index = faiss.index_factory(dim, f"IVF{_lists(rows)},SQfp16", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = NPROBE
    ivf.cp.seed, ivf.cp.niter = seed, KMEANS_ROUNDS
    return index


def training_rows(rows: int) -> int:
    """How many of ``rows`` base annotations train its inverted file (0: exact, untrained)."""
    return 0 if rows <= EXACT_UP_TO else min(rows, ROWS_PER_LIST * _lists(rows))


def near_pairs(
    index: faiss.Index,
    base_ids: np.ndarray,
    base_splits: np.ndarray,
    query: np.ndarray,
    query_ids: np.ndarray,
    query_splits: np.ndarray,
    threshold: float = NEAR_DUPLICATE,
) -> np.ndarray:
    """[n, 3] (query segment id, base segment id, cosine) of the pairs of different
    splits at least ``threshold`` alike, each pair once (the smaller id first). ``base_ids``
    sorted, with ``base_splits`` beside them."""
    if not len(query) or index.ntotal == 0:
        return np.zeros((0, 3))
    sims, found = index.search(np.ascontiguousarray(query, np.float32), min(NEIGHBOURS, index.ntotal))
    rows, cols = np.nonzero((found >= 0) & (sims >= threshold))
    other = found[rows, cols]
    at = np.clip(np.searchsorted(base_ids, other), 0, len(base_ids) - 1)
    keep = (base_ids[at] == other) & (base_splits[at] != query_splits[rows])
    a, b = query_ids[rows[keep]], other[keep]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b), sims[rows[keep], cols[keep]]], 1)
    return pairs


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Each (id, id) pair once, at its best cosine: with three splits or more a pair of
    two smaller splits is found from both sides (the checkpoint holds it once)."""
    if not len(pairs):
        return pairs
    order = np.lexsort((-pairs[:, 2], pairs[:, 1], pairs[:, 0]))
    pairs = pairs[order]
    first = np.ones(len(pairs), bool)
    first[1:] = (pairs[1:, 0] != pairs[:-1, 0]) | (pairs[1:, 1] != pairs[:-1, 1])
    return pairs[first]


def near_groups(
    pairs: np.ndarray,
    segment_image: dict[int, int],
    segment_box: dict[int, tuple[float, float, float, float]],
    image_annotations: dict[int, int],
    image_splits: dict[int, set[str]],
    threshold: float = NEAR_DUPLICATE,
    min_score: float = PAIR_MIN_SCORE,
) -> list[dict]:
    """Pairs of photos linked by near-duplicate annotations, each with its matched
    annotations, those scoring at least ``min_score``. A pair scores the share of the
    smaller photo's annotations matched, each match weighed by how far its cosine lies
    past ``threshold`` (toward 1) and by how well the two boxes agree once each is taken
    relative to its photo
    (``segment_box``: x, y, w, h as fractions of the photo's width and height): a resized
    or re-encoded copy matches every object, each nearly exactly and at its place; two
    photos that merely show look-alike objects match few, less closely, elsewhere.
    Pairs are not chained into larger groups: in a world of look-alikes one photo of a
    single object would link dozens (copies with the same content are grouped whole,
    ``exact_groups``)."""
    if not len(pairs):
        return []
    _, first = np.unique(pairs[:, :2], axis=0, return_index=True)
    pairs = pairs[np.sort(first)]
    linked: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)  # per photo pair: best weight per annotation
    matches: dict[tuple[int, int], list] = defaultdict(list)
    for a, b, sim in pairs.tolist():
        a, b = int(a), int(b)
        ia, ib = segment_image[a], segment_image[b]
        if ia == ib:
            continue
        if ia > ib:
            a, b, ia, ib = b, a, ib, ia
        weight = min(1.0, (sim - threshold) / (1 - threshold)) * _box_iou(segment_box[a], segment_box[b])
        linked[(ia, ib)][a] = max(linked[(ia, ib)].get(a, 0.0), weight)
        matches[(ia, ib)].append([a, b, round(sim, 4)])
    out = []
    for pair, found in linked.items():
        smaller = max(1, min(image_annotations.get(pair[0], 1), image_annotations.get(pair[1], 1)))
        score = round(min(1.0, sum(found.values()) / smaller), 6)
        if score < min_score:  # a look-alike or two: no copy of the photo
            continue
        out.append(
            {
                "images": list(pair),
                "splits": sorted(set().union(*(image_splits.get(i, set()) for i in pair))),
                "kind": "near duplicate",
                "score": score,
                "segments": sorted(matches[pair])[:50],
            }
        )
    return sorted(out, key=lambda g: (-g["score"], g["images"]))


def _box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    union = aw * ah + bw * bh - w * h
    return w * h / union if union > 0 else 0.0
