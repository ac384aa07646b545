"""Distributed indexing and sharded search on this machine.

1. Images/s indexing the same photos sequentially and with ``--ray`` (local Ray,
   ``--workers`` model actors): the pipeline's overhead (Ray start-up, moving
   decoded photos, fragment files, the single committer) against one process.
2. Query latency of an index split into ``--shards`` shards against one index of the
   same segments (synthetic 768-d vectors, as benchmarks/scale.py builds them).

    python benchmarks/distributed_index.py [--images 16] [--workers 2] [--n 1000000] [--shards 4]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from index_throughput import write_photos
from scale import build, concepts, members, percentiles

from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths, reindex
from usesearch.indexer.distributed import index_paths_ray


def steady_rate(times: list[float], wall_s: float) -> float:
    """Images/s between the first and the last commit: start-up (Ray, model loading
    in each actor) excluded. NaN where that window is under half the run: commits
    that come in a burst (Ray's actors finishing together) give no steady rate."""
    if len(times) < 4 or times[-1] - times[0] < 0.5 * wall_s:
        return float("nan")
    return (len(times) - 1) / (times[-1] - times[0])


def indexing(args, tmp: Path) -> None:
    photos = tmp / "photos"
    write_photos(photos, args.images, args.side)
    options = IndexOptions(
        preset="tiny",
        masker="sam",
        masker_options={
            "points_per_side": args.points_per_side,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "box_nms_thresh": 1.0,
        },
    )
    torch.set_num_threads(args.threads)
    commits = {"sequential": [], "ray": []}

    def timer(name):
        def progress(report, path, total):
            while len(commits[name]) < report.done:
                commits[name].append(time.perf_counter())

        return progress

    start = time.perf_counter()
    sequential = index_paths([photos], tmp / "sequential", options, timer("sequential"))
    sequential_s = time.perf_counter() - start
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    startup_s = time.perf_counter() - start
    distributed = index_paths_ray([photos], tmp / "ray", options, timer("ray"), workers=args.workers)
    ray_s = time.perf_counter() - start
    ray.shutdown()
    assert distributed.segments == sequential.segments, (distributed.segments, sequential.segments)
    seq_rate, ray_rate = steady_rate(commits["sequential"], sequential_s), steady_rate(commits["ray"], ray_s)

    def rate(value: float) -> str:  # NaN: commits in a burst, no steady rate (said below)
        return f"{value:5.2f} img/s" if value == value else "no steady rate"

    print(
        f"{args.images} photos of {args.side}x{args.side * 3 // 4}, tiny preset, SAM masker at {args.points_per_side}x"
        f"{args.points_per_side} points, thresholds 0; {sequential.segments} segments"
    )
    print(
        f"sequential (1 process, {args.threads} threads): {sequential_s:6.1f} s wall, "
        f"{rate(seq_rate)} between first and last commit"
    )
    print(
        f"--ray ({args.workers} actors, {args.threads} CPUs):      {ray_s:6.1f} s wall "
        f"(Ray start-up {startup_s:.1f} s, "
        f"first commit after {commits['ray'][0] - start:.1f} s), {rate(ray_rate)} between first and last commit"
    )
    print(f"wall time against sequential, Ray's start-up left out: {(ray_s - startup_s) / sequential_s - 1:+.0%}")
    if seq_rate == seq_rate and ray_rate == ray_rate:  # both steady (not NaN)
        print(f"pipeline overhead at steady state: {seq_rate / ray_rate - 1:+.0%} time per image")
    else:
        print("no steady-state comparison: commits came in bursts (more photos give one)")


def sharded_search(args, tmp: Path) -> None:
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres, spread = concepts(rng, 20_000)
    one, sharded = tmp / "one", tmp / "sharded"
    one.mkdir()
    build(one, args.n, rng, centres, spread)
    shutil.copytree(one, sharded)
    start = time.perf_counter()
    reindex(one)
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    reindex(sharded, shard_size=-(-args.n // args.shards))
    sharded_s = time.perf_counter() - start
    queries = members(rng, centres, spread, rng.integers(0, len(centres), args.queries))
    print(f"{args.n} segments; build: one index {one_s:.0f} s, {args.shards} shards {sharded_s:.0f} s")
    indexes = {"one index": SegmentIndex.open(one), f"{args.shards} shards": SegmentIndex.open(sharded)}
    print(f"index: {indexes['one index'].stats()['index_choice']}")
    found = {}
    for name, ix in indexes.items():
        for label, filters in (
            ("no filter", SearchFilters()),
            ("--path (1%)", SearchFilters(path="/archive/07/*")),
            ("--per-image", SearchFilters(per_image=True)),
        ):
            times, hits = [], []
            for q in queries:
                t = time.perf_counter()
                hits.append([h.segment_id for h in ix.search_vector(q, 10, filters)])
                times.append(time.perf_counter() - t)
            found[name, label] = hits
            print(f"  {name:<10} {label:<12}: {percentiles(times)}")
    same = all(
        found["one index", label] == found[f"{args.shards} shards", label]
        for label in ("no filter", "--path (1%)", "--per-image")
    )
    print(f"sharded answers identical to one index: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=200_000, help="segments for the shard comparison")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--skip", choices=("indexing", "search"), default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="usesearch-distributed-"))
    try:
        if args.skip != "indexing":
            indexing(args, tmp)
        if args.skip != "search":
            sharded_search(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
