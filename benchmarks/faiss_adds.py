"""What a commit's FAISS add costs once an index is compressed, a photo's segments at
a time (``Vectors.add``) against deferred adds gathered into batches of
``DEFERRED_ADDS`` (``Vectors.add(..., defer=True)``, what the writer does).

Past 200k segments an index is ``IVF{nlist},PQ128x4fs`` (index_choice.py); every
added vector is assigned to its nearest of ``nlist`` centroids and its fast-scan
codes are packed into its list. On a GPU run of ~20 photos/s the commit thread adds
100 vectors every 50 ms, so this cost bounds the pipeline whatever the card does.

    python benchmarks/faiss_adds.py [--nlist 1024,4096] [--dim 768] [--photos 100] [--per-photo 100]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from usesearch.indexer import index_choice, index_kinds, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nlist", default="1024,4096")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--per-photo", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.photos * args.per_photo
    print(f"{args.photos} photos of {args.per_photo} vectors, {args.dim}-d, {faiss.omp_get_max_threads()} threads")
    for nlist in map(int, args.nlist.split(",")):
        # 20 a list, and at least what the 4-bit PQ's 16 centroids ask for (39 each: FAISS warns below)
        train = rng.standard_normal((max(20 * nlist, 39 * 16), args.dim)).astype(np.float32)
        data = rng.standard_normal((n, args.dim)).astype(np.float32)
        for x in (train, data):
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        factory = f"IVF{nlist},PQ{index_choice.pq_m(args.dim, 4)}x4fs"
        trained = index_kinds.new_index(args.dim, factory)
        faiss.extract_index_ivf(trained).cp.niter = 4  # the centroids' quality does not change the cost
        faiss.extract_index_ivf(trained).cp.min_points_per_centroid = 1
        trained.train(train)
        line = []
        for defer in (False, True):
            index = vectors.Vectors(faiss.clone_index(trained))
            start = time.perf_counter()
            for photo in range(args.photos):
                rows = slice(photo * args.per_photo, (photo + 1) * args.per_photo)
                index.add(np.arange(rows.start, rows.stop) + 1, data[rows], defer=defer)
            assert index.ntotal == n  # the deferred ones counted in, so added
            ms = (time.perf_counter() - start) / args.photos * 1000
            line.append(f"{'deferred' if defer else 'a photo at a time'} {ms:.1f} ms")
        print(f"{factory}: per photo, " + ", ".join(line))


if __name__ == "__main__":
    main()
