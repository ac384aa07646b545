"""Warm query latency over a large store: FAISS alone and the whole query path.

Builds a store of N segments (default 1,000,000, 768-d) whose vectors are clustered
like real embeddings (many tight clusters on the sphere, not uniform noise), with
metadata in SQLite, then reports p50/p99 for:
  * FAISS search alone, exact (IDMap2,Flat) and approximate (default HNSW32),
  * the whole path after the text embedding (search, filters, metadata, RLE),
  * recall@10 of the approximate index against exact,
  * text-embedding time for the tiny and b16 text towers, cold and cached.

    python benchmarks/query_latency.py [--n 1000000] [--queries 200] [--approx HNSW32 --param efSearch=256]

Memory: about 4 GB per million vectors (store, exact and HNSW indexes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import torch
from sqlalchemy import insert

from usesearch.indexer import SearchFilters, index_kinds, vector_files, vectors
from usesearch.indexer.folder import FAISS_FILE, db_url_for
from usesearch.indexer.records import ImageRecord, IndexInfo, SegmentRecord
from usesearch.indexer.search import SegmentIndex
from usesearch.indexer.store import Store


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    # Zipf-like cluster sizes: a few very common concepts, a long tail.
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    labels = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        part = labels[start : start + 100_000]
        block = centers[part] + rng.standard_normal((len(part), dim)).astype(np.float32) * 0.03
        out[start : start + len(part)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, centers


def build_store(db: Path, data: np.ndarray, images: int, rng: np.random.Generator) -> Store:
    store = Store(db_url_for(db, None))
    store.set_info(
        IndexInfo(
            preset="bench",
            embedder="use",
            fingerprint="bench",
            head=None,
            dim=data.shape[1],
            masker="none",
            masker_params={},
            factory=vectors.DEFAULT_FACTORY,
        )
    )
    with store.sessions.begin() as s:
        s.execute(
            insert(ImageRecord),
            [
                {
                    "id": i + 1,
                    "path": f"/archive/{i % 100:02d}/img{i:07d}.jpg",
                    "fs_path": f"/archive/{i % 100:02d}/img{i:07d}.jpg".encode(),
                    "sha256": f"{i:064x}",
                    "width": 640,
                    "height": 480,
                    "status": "done",
                }
                for i in range(images)
            ],
        )
    rle = "PPP1e0P2001O0000O1O001N101O001O0O2N1O1O1N2N1O2N2N2M3M3M4K6J8G]Q`0"  # a typical small mask
    for start in range(0, len(data), 50_000):
        rows = [
            {
                "id": start + j + 1,
                "image_id": int(rng.integers(images)) + 1,
                "x": 10,
                "y": 20,
                "w": 60,
                "h": 40,
                "area": int(a),
                "rle_counts": rle,
                "predicted_iou": 0.9,
                "stability_score": 0.95,
                "vec_chunk": int(c),
                "vec_row": int(r),
            }
            for j, (a, c, r) in enumerate(
                zip(
                    rng.integers(50, 50_000, min(50_000, len(data) - start)),
                    *store.files().append(data[start : start + 50_000]),
                )
            )
        ]
        with store.sessions.begin() as s:
            s.execute(insert(SegmentRecord), rows)
    return store


def percentiles(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000
    return f"p50 {np.percentile(ms, 50):7.2f} ms   p99 {np.percentile(ms, 99):7.2f} ms"


def timed(fn, queries) -> tuple[list[float], list]:
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - start)
    return times, results


def text_timings() -> None:
    from usesearch.models.backbones import build_clip
    from usesearch.models.presets import get_preset
    from usesearch.models.text import TextEncoder

    for name in ("tiny", "b16"):
        cfg = replace(get_preset(name).clip, pretrained=None)
        clip = build_clip(cfg, name, native_size=True)
        text = TextEncoder(clip.model, clip.tokenizer, torch.device("cpu"))
        text.embed(["warm up"])
        cold, _ = timed(lambda q: text.embed([q]), [f"a red apple number {i} behind the rabbit" for i in range(20)])
        warm, _ = timed(lambda q: text.embed([q]), [f"a red apple number {i} behind the rabbit" for i in range(20)])
        print(
            f"text embedding {name:>4} ({cfg.model_name}, 4 templates): "
            f"new query {percentiles(cold)}; cached {percentiles(warm)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--approx", default="HNSW32", help="approximate FAISS factory string")
    parser.add_argument("--param", default="efSearch=256", help="its search-time parameter, NAME=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    text_timings()
    data, centers = clustered(args.n, args.dim, args.clusters, rng)
    # Queries: near a concept but not a stored vector, like a text query is.
    picks = rng.choice(args.clusters, args.queries) if args.clusters < 1000 else rng.integers(0, 1000, args.queries)
    queries = centers[picks] + rng.standard_normal((args.queries, args.dim)).astype(np.float32) * 0.05
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp)
        start = time.perf_counter()
        store = build_store(db, data, args.images, rng)
        print(
            f"store: {args.n} segments, {args.dim}-d, metadata + embeddings in SQLite: "
            f"{time.perf_counter() - start:.0f} s"
        )
        ids = np.arange(1, args.n + 1, dtype=np.int64)
        exact = index_kinds.new_index(args.dim, vectors.DEFAULT_FACTORY)
        exact.add_with_ids(data, ids)
        start = time.perf_counter()
        approx = index_kinds.new_index(args.dim, args.approx)
        if not approx.is_trained:
            approx.train(data[rng.choice(len(data), min(len(data), 200_000), replace=False)])
        approx.add_with_ids(data, ids)
        print(f"{args.approx} build: {time.perf_counter() - start:.0f} s")
        param, value = args.param.split("=")
        faiss.ParameterSpace().set_index_parameter(approx, param, float(value))
        del data

        exact_t, exact_r = timed(lambda q: exact.search(q[None], 10)[1][0], queries)
        approx_t, approx_r = timed(lambda q: approx.search(q[None], 10)[1][0], queries)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_r, approx_r)])
        print(f"FAISS alone, exact IDMap2,Flat : {percentiles(exact_t)}")
        print(f"FAISS alone, {args.approx} {args.param}: {percentiles(approx_t)}   recall@10 vs exact {recall:.3f}")

        for name, index in (("exact", exact), (args.approx, approx)):
            factory = vectors.DEFAULT_FACTORY if index is exact else args.approx  # (recorded as is: none rebuilt)
            store.set_factory(factory, "fixed")
            vector_files.write_index_files(
                vectors.Vectors(index), db / FAISS_FILE, store, args.dim, factory, in_sync=True
            )
            ix = SegmentIndex(db, store)
            ix.index = vectors.Vectors(index)  # the warm in-process index, as a server holds it
            for label, filters in (
                ("k=10", SearchFilters()),
                ("k=10 --per-image --min-area 1000", SearchFilters(per_image=True, min_area=1000)),
                ("k=10 --path (1% of images)", SearchFilters(path="/archive/07/*")),
                ("k=10 --path matching nothing", SearchFilters(path="*/nomatch/*")),
            ):
                t, _ = timed(lambda q: ix.search_vector(q, 10, filters), queries)
                print(f"whole path after text, {name:>6}, {label:<34}: {percentiles(t)}")


if __name__ == "__main__":
    main()
