"""usesearch against LanceDB on the same segments and queries: recall@10 at each one's
defaults and along its effort knobs, latency, index bytes per segment, a 1% filter.

The segments and queries are ``scale.py``'s (clustered and hard concepts, 768-d); the
usesearch index is forced compressed (OPQ/IVF-PQ with exact re-scoring, calibrated as
``reindex`` calibrates it) and holds its locations in memory, as ``serve`` does. LanceDB
gets the same float32 vectors and a ``folder`` column (the 1% filter is folder 7, as
scale.py's path glob is), its IVF_PQ index built with its own defaults for the dot
product. Queries run one at a time, one setting after another (not interleaved: a
busy machine during one setting's run shows in that setting's figures alone).

    pip install lancedb        # not a dependency of usesearch
    python benchmarks/peers.py --n 500000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from scale import BATCH, PATH_1PC, build, concepts, exact_top, held_out, members

from usesearch.indexer import SearchFilters, SegmentIndex, index_choice, reindex


def lance_table(folder: Path, ix: SegmentIndex, n: int):
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfPq

    images = max(1, n // 100)

    def batches():
        for ids, vectors in ix.store.embeddings(batch=BATCH):
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(ids, pa.int64()),
                    pa.array((((ids - 1) * images // n) % 100).astype(np.int32)),
                    pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
                ],
                names=["id", "folder", "vector"],
            )

    schema = pa.schema([("id", pa.int64()), ("folder", pa.int32()), ("vector", pa.list_(pa.float32(), ix.info.dim))])
    db = lancedb.connect(folder)
    table = db.create_table("segments", data=batches(), schema=schema)
    start = time.perf_counter()
    table.create_index("vector", config=IvfPq(distance_type="dot"))  # its defaults otherwise
    return table, time.perf_counter() - start


def run(label, search, queries, truth, picks) -> None:
    times, recall = [], []
    for q, t in zip(queries, truth):
        start = time.perf_counter()
        found = search(q)
        times.append(time.perf_counter() - start)
        recall.append(len(set(found) & set(t[:10].tolist())) / 10)
    got, ms = np.array(recall), np.array(times) * 1000
    print(
        f"  {label:<46} p50 {np.percentile(ms, 50):6.1f} ms  p99 {np.percentile(ms, 99):6.1f} ms   recall@10 "
        f"clustered {got[picks % 2 == 0].mean():.3f}, hard {got[picks % 2 == 1].mean():.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--concepts", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, default=None, help="where to build (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="with --folder: query what an earlier run built there")
    parser.add_argument("--build-only", action="store_true", help="build both, then stop (query later with --reuse)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    index_choice.EXACT_UP_TO = min(index_choice.EXACT_UP_TO, args.n // 4)  # compressed, as at archive scale
    rng = np.random.default_rng(0)
    centres, spread = concepts(rng, args.concepts)
    root = args.folder or Path(tempfile.mkdtemp(prefix="usesearch-peers-"))
    try:
        ours = root / "usesearch"
        ours_s = lance_s = 0.0
        if not (args.reuse and ours.is_dir()):
            ours.mkdir(parents=True, exist_ok=True)
            build(ours, args.n, rng, centres, spread)
            start = time.perf_counter()
            reindex(ours, queries=held_out(centres, spread, 200))
            ours_s = time.perf_counter() - start
        ix = SegmentIndex.open(ours, device="cpu", locations="memory")
        if args.reuse and (root / "lancedb").is_dir():
            import lancedb

            table = lancedb.connect(root / "lancedb").open_table("segments")
        else:
            table, lance_s = lance_table(root / "lancedb", ix, args.n)
        ours_bytes = faiss.serialize_index(ix.index.index).nbytes + ix.stats()["location_map_bytes"]
        lance_bytes = sum(p.stat().st_size for p in (root / "lancedb").rglob("*") if "_indices" in p.parts)
        print(
            f"{args.n} segments. usesearch {ix.info.factory}, calibrated: {ix.calibration.describe()}; "
            f"built in {ours_s:.0f} s, {ours_bytes / args.n:.0f} B per segment in memory (codes + locations)"
        )
        print(
            f"LanceDB IVF_PQ (its defaults, dot): built in {lance_s:.0f} s, "
            f"index {lance_bytes / args.n:.0f} B per segment"
        )

        if args.build_only:
            return
        queries_rng = np.random.default_rng(2)  # the same queries whether the segments were built now or before
        picks = queries_rng.integers(0, args.concepts, args.queries)
        queries = members(queries_rng, centres, spread, picks)
        images = max(1, args.n // 100)
        (_, truth), (_, truth_path) = exact_top(
            ix.store, queries, lambda ids: ((ids - 1) * images // args.n) % 100 == 7
        )

        def ours_search(filters=None):
            return lambda q: [h.segment_id for h in ix.search_vector(q, 10, filters)]

        def lance_search(nprobes=None, refine=None, where=None):
            def search(q):
                s = table.search(q, vector_column_name="vector").metric("dot").limit(10).select(["id"])
                if nprobes:
                    s = s.nprobes(nprobes)
                if refine:
                    s = s.refine_factor(refine)
                if where:
                    s = s.where(where, prefilter=True)
                return s.to_arrow()["id"].to_pylist()

            return search

        print("no filter:")
        for label, search in (
            ("usesearch, calibrated defaults", ours_search()),
            ("LanceDB, its defaults", lance_search()),
            ("usesearch --nprobe 64 --rerank 1000", ours_search(SearchFilters(nprobe=64, rerank=1000))),
            ("LanceDB nprobes 64, refine_factor 50", lance_search(64, 50)),
            ("LanceDB nprobes 256, refine_factor 100", lance_search(256, 100)),
        ):
            run(label, search, queries, truth, picks)
        print("1% path filter:")
        run("usesearch --path (1% of images)", ours_search(SearchFilters(path=PATH_1PC)), queries, truth_path, picks)
        run("LanceDB where folder = 7 (prefilter)", lance_search(where="folder = 7"), queries, truth_path, picks)
    finally:
        if args.folder is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
