"""Exact re-scoring with the embedding files cold: the first query after a restart,
or an archive whose files are larger than the page cache.

Queries an index built by ``scale.py`` (compressed, so candidates are re-scored from
the float16 files) at its calibrated defaults and at other --rerank counts, twice:
cold, every query after the embedding files are dropped from the page cache
(``posix_fadvise(DONTNEED)``, which needs no root for clean pages, and the process's
maps and checksums are let go, as after a restart), and warm. Prints p50/p99 of the
whole query and of its re-scoring.

    python benchmarks/scale.py --n 1000000 --folder /tmp/scale-1m   # builds the index (minutes)
    python benchmarks/cold_rescore.py --folder /tmp/scale-1m [--no-read-ahead]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import concepts, members  # noqa: E402  (the same generator as the index's vectors)

from usesearch.indexer import SearchFilters, SegmentIndex  # noqa: E402
from usesearch.indexer.embeddings import EmbeddingFiles  # noqa: E402


def evict(files: EmbeddingFiles) -> None:
    """Drop the chunks from the page cache. Pages this process still maps are not
    dropped, so its maps and cached checksums go first (as after a restart)."""
    files._maps.clear()
    files._mmaps.clear()
    files._sums.clear()
    for chunk in files.chunks():
        for path in (files.path(chunk), files.sums_path(chunk)):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def ms(samples: list[float]) -> str:
    a = np.asarray(samples) * 1000
    return f"p50 {np.percentile(a, 50):6.1f} ms  p99 {np.percentile(a, 99):6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="an index folder built by scale.py")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--concepts", type=int, default=20_000, help="as scale.py was run with")
    parser.add_argument("--rerank", default="default 1000 5000 10000", help="re-scored candidate counts to try")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-read-ahead", action="store_true", help="page faults only, as before read-ahead advice")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    centres, spread = concepts(np.random.default_rng(0), args.concepts)
    rng = np.random.default_rng(2)  # other draws than scale.py's measured and calibration queries
    queries = members(rng, centres, spread, rng.integers(0, args.concepts, args.queries))
    ix = SegmentIndex.open(args.folder, device="cpu")
    if ix.index.exact:
        raise SystemExit(f"{args.folder}: an exact index re-scores nothing (build a larger one)")
    files = ix.store.files()
    files.read_ahead = not args.no_read_ahead
    rescoring: list[float] = []
    plain = files.scores

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return plain(*a, **kw)
        finally:
            rescoring.append(time.perf_counter() - t)

    files.scores = timed  # type: ignore[method-assign]
    cal = ix.calibration
    print(f"{files.bytes_on_disk() / 1e9:.2f} GB of embedding files; calibrated nprobe {cal and cal.nprobe}")
    for setting in args.rerank.split():
        rerank = None if setting == "default" else int(setting)
        filters = SearchFilters(rerank=rerank)
        label = f"rerank {cal.rerank if rerank is None and cal else setting}"
        for state in ("cold", "warm"):
            if state == "warm":
                for q in queries:  # every row these queries re-score, in the page cache
                    ix.search_vector(q, 10, filters)
            total: list[float] = []
            rescoring.clear()
            for q in queries:
                if state == "cold":
                    evict(files)
                t = time.perf_counter()
                ix.search_vector(q, 10, filters)
                total.append(time.perf_counter() - t)
            print(f"{label:<12} {state}: query {ms(total)}   re-scoring {ms(rescoring)}", flush=True)
    ix.close()


if __name__ == "__main__":
    main()
