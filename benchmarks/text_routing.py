"""Routing text queries through a compressed index's lists: does anything beat the plain IVF?

Text queries do not lie where the stored segments lie (CLIP's modality gap), the case
in which ANN indexes need many more partitions than for in-distribution queries. This
measures, on an index built by ``scale.py`` (its stored vectors and its trained IVF),
how many of a query's exact top-10 lie in the first ``nprobe`` lists each routing rule
visits: the ceiling on recall@10 at that effort (the lists' codes and re-scoring then
lose some more, the same for every rule). Equal ``nprobe`` is equal latency: every rule
costs one [d] vector before the coarse search.

Text-like queries: ``scale.py``'s concepts seen through an imperfect cross-modal map,
t = normalise(P c + g + n), where P = I + e A (A Gaussian) distorts the concept, g is
one fixed gap vector shared by every text query and n is noise; the true neighbours
are the exact top-10 stored segments by <t, x>. Rules, each fitted on queries of other
concepts than the measured ones (as a vocabulary's class names are not the user's):
  plain     route by t (what FAISS does);
  shifted   route by t - mean(text queries) + mean(stored segments): across the gap;
  learned   route by W t, W a ridge regression from training queries to the mean of
            their exact top-10 (where a query's neighbours are);
  retrained a coarse quantizer trained on stored segments plus text-like queries
            (the stored segments re-assigned to its lists).

    python benchmarks/scale.py --n 200000 --exact-up-to 50000 --folder /tmp/scale200k
    python benchmarks/text_routing.py --folder /tmp/scale200k
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
from scale import DIM, concepts

from usesearch.indexer import SegmentIndex
from usesearch.indexer.index_kinds import index_ids, ivf_of

NPROBES = (4, 8, 16, 32, 64, 128, 256)


def text_like(rng, centres, picks, distortion, gap, noise: float) -> np.ndarray:
    out = (
        centres[picks] @ distortion.T
        + gap
        + noise * rng.standard_normal((len(picks), DIM)).astype(np.float32) / np.sqrt(DIM)
    )
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def exact_top(stored: np.ndarray, queries: np.ndarray, k: int = 10, block: int = 1024) -> np.ndarray:
    """Row numbers of each query's exact top-k stored vectors."""
    out = np.empty((len(queries), k), np.int64)
    for lo in range(0, len(queries), block):
        scores = queries[lo : lo + block] @ stored.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out[lo : lo + block] = top
    return out


def coverage(order: np.ndarray, list_of_truth: np.ndarray) -> dict[int, float]:
    """Mean share of the true top-10 inside the first nprobe lists, for each nprobe."""
    rank = np.full((len(order), order.max() + 1), order.shape[1], np.int64)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), 1)
    where = np.take_along_axis(rank, list_of_truth, 1)  # each true neighbour's list's visiting rank
    return {p: float((where < p).mean()) for p in NPROBES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="an index built by scale.py (compressed)")
    parser.add_argument("--concepts", type=int, default=20_000, help="as scale.py was run with")
    parser.add_argument("--train", type=int, default=2000, help="training queries (their concepts are not measured)")
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--distortion", type=float, default=0.5, help="e in P = I + e A")
    parser.add_argument("--gap", type=float, default=0.8, help="norm of the shared gap vector g")
    parser.add_argument("--noise", type=float, default=1.0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    centres, spread = concepts(np.random.default_rng(0), args.concepts)  # scale.py's own concepts
    ix = SegmentIndex.open(args.folder, device="cpu")
    ivf = ivf_of(ix.index.index)
    if ivf is None:
        raise SystemExit(f"{args.folder} holds an exact index: nothing is routed")
    ids, stored = [], []
    for i, v in ix.store.embeddings(batch=200_000):
        ids.append(i)
        stored.append(v)
    seg_ids, data = np.concatenate(ids), np.concatenate(stored)
    row_of = np.zeros(seg_ids.max() + 1, np.int64)
    row_of[seg_ids] = np.arange(len(seg_ids))
    list_of = np.zeros(len(seg_ids), np.int64)  # each stored row's list in the trained IVF
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        if size:
            list_of[row_of[faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)]] = number
    assert len(index_ids(ix.index.index)) == len(seg_ids)
    print(
        f"{len(data)} stored segments, IVF with {ivf.nlist} lists; text-like queries: "
        f"distortion {args.distortion}, gap {args.gap}, noise {args.noise}"
    )

    rng = np.random.default_rng(5)
    a = rng.standard_normal((DIM, DIM)).astype(np.float32) / np.sqrt(DIM)
    distortion = np.eye(DIM, dtype=np.float32) + args.distortion * a
    gap = rng.standard_normal(DIM).astype(np.float32)
    gap *= args.gap / np.linalg.norm(gap)
    order = rng.permutation(args.concepts)
    train_picks, test_picks = order[: args.train], order[args.train : args.train + args.test]
    train_q = text_like(rng, centres, train_picks, distortion, gap, args.noise)
    test_q = text_like(rng, centres, test_picks, distortion, gap, args.noise)
    start = time.perf_counter()
    train_truth, test_truth = exact_top(data, train_q), exact_top(data, test_q)
    print(
        f"exact top-10 of {len(train_q) + len(test_q)} queries: {time.perf_counter() - start:.0f} s; "
        f"cosine of a query to its 10th neighbour: median {np.median((test_q * data[test_truth[:, 9]]).sum(1)):.3f}"
    )

    quantizer = ivf.quantizer
    rules: dict[str, tuple[faiss.Index, np.ndarray, np.ndarray]] = {}
    rules["plain"] = (quantizer, test_q, list_of)
    shifted = test_q - train_q.mean(0) + data[rng.integers(0, len(data), 20_000)].mean(0)
    rules["shifted"] = (quantizer, shifted, list_of)
    target = data[train_truth].mean(1)
    lam = 1e-2 * len(train_q)
    w = np.linalg.solve(train_q.T @ train_q + lam * np.eye(DIM, dtype=np.float32), train_q.T @ target)
    rules["learned"] = (quantizer, test_q @ w, list_of)
    mixed = np.concatenate([data[rng.integers(0, len(data), 100_000)], train_q])
    kmeans = faiss.Kmeans(DIM, ivf.nlist, niter=10, seed=1, spherical=True)
    kmeans.train(mixed)
    _, retrained_list = kmeans.index.search(data, 1)
    rules["retrained"] = (kmeans.index, test_q, retrained_list[:, 0])

    kinds = {"clustered": test_picks % 2 == 0, "hard": test_picks % 2 == 1}
    print("share of the true top-10 in the first nprobe lists (the ceiling on recall@10):")
    print(f"  {'rule':<10} {'kind':<9} " + " ".join(f"{p:>6}" for p in NPROBES))
    for name, (routing, vectors, lists) in rules.items():
        routed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        _, visit = routing.search(np.ascontiguousarray(routed, np.float32), ivf.nlist)
        for kind, mask in kinds.items():
            share = coverage(visit[mask], lists[test_truth[mask]])
            print(f"  {name:<10} {kind:<9} " + " ".join(f"{share[p]:6.3f}" for p in NPROBES), flush=True)


if __name__ == "__main__":
    main()
