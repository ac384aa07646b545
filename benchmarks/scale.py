"""An archive-scale index on one machine: build time, bytes per segment, latency, recall.

Builds an index folder of N segments (768-d, over N/100 images in nested folders)
without models: metadata in SQLite, float16 embedding files, then `reindex` with the
automatic index choice (exact while small, OPQ+IVF+PQ with exact re-scoring past
that). Two kinds of concepts are mixed:
  * clustered: tight clusters on the sphere, like distinct objects;
  * hard: diffuse clusters where a query's 10th and 100th exact neighbours differ by
    less than 0.05 in cosine, like CLIP text-to-segment scores (low and close).
It prints build time, bytes per segment in memory (the FAISS index) and on disk,
query p50/p99 after the text embedding (no filter, a 1% path filter, --per-image),
and recall@10 against exact search for each kind of query. A compressed index is
calibrated (``indexer/calibration.py``) with a held-out draw of this generator's own
queries (other draws than the measured ones, clustered and hard in the same
proportion) as its typed queries, which is what the model's vocabulary does for a
real index; the recall it predicts is printed next to the recall measured.

    python benchmarks/scale.py --n 200000            # a few minutes
    python benchmarks/scale.py --n 10000000 --folder /big/disk/scale   # the archive target, ~1 h on 2 cores
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import insert

from usesearch.indexer import SearchFilters, SegmentIndex, index_choice, recalibrate, reindex
from usesearch.indexer.folder import DB_FILE, FAISS_FILE, db_url_for
from usesearch.indexer.records import ImageRecord, IndexInfo, SegmentRecord
from usesearch.indexer.store import Store

DIM = 768
BATCH = 200_000
PATH_1PC = "/archive/07/*"  # a 1% path filter: images i with i % 100 == 7
TIGHT, DIFFUSE = 0.6, 2.2  # noise/centre norm ratio: cos(member, centre) ~ 0.86 and ~ 0.41


def concepts(rng: np.random.Generator, n_concepts: int) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((n_concepts, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = np.where(np.arange(n_concepts) % 2 == 0, TIGHT, DIFFUSE).astype(np.float32)  # even: clustered, odd: hard
    return centres, spread


def members(rng, centres, spread, labels) -> np.ndarray:
    noise = rng.standard_normal((len(labels), DIM)).astype(np.float32) / np.sqrt(DIM)
    out = centres[labels] + spread[labels, None] * noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def concept_weights(n_concepts: int) -> np.ndarray:
    """How often each concept is drawn for a stored segment: a few common concepts, a long tail."""
    weights = 1.0 / np.arange(1, n_concepts + 1) ** 0.7
    return weights / weights.sum()


def of_size(n: int, n_concepts: int, members_wanted: int, count: int) -> np.ndarray:
    """``count`` concepts (clustered and hard alternating, as the generator makes them)
    whose expected number of stored members is nearest ``members_wanted``."""
    expected = n * concept_weights(n_concepts)
    order = np.argsort(np.abs(np.log(expected / members_wanted)), kind="stable")
    clustered = [c for c in order if c % 2 == 0][: count // 2]
    hard = [c for c in order if c % 2 == 1][: count - count // 2]
    return np.array(clustered + hard)


def build(folder: Path, n: int, rng, centres, spread) -> float:
    start = time.perf_counter()
    store = Store(db_url_for(folder, None))
    store.set_info(
        IndexInfo(
            preset="bench",
            embedder="use",
            fingerprint="bench",
            head=None,
            dim=DIM,
            masker="none",
            masker_params={},
            factory="IDMap2,Flat",
            index_mode="auto",
        )
    )
    images = max(1, n // 100)
    with store.sessions.begin() as s:
        for lo in range(0, images, BATCH):
            s.execute(
                insert(ImageRecord),
                [
                    {
                        "id": i + 1,
                        "path": f"/archive/{i % 100:02d}/{i // 100 % 100:02d}/img{i:08d}.jpg",
                        "fs_path": f"/archive/{i % 100:02d}/{i // 100 % 100:02d}/img{i:08d}.jpg".encode(),
                        "sha256": f"{i:064x}",
                        "width": 640,
                        "height": 480,
                        "status": "done",
                    }
                    for i in range(lo, min(images, lo + BATCH))
                ],
            )
    weights = concept_weights(len(centres))
    rle = "PPP1e0P2001O0000O1O001N101O001O0O2N1O1O1N2N1O2N2N2M3M3M4K6J8G]Q`0"  # a typical small mask
    for lo in range(0, n, BATCH):
        count = min(BATCH, n - lo)
        labels = rng.choice(len(centres), count, p=weights)
        chunks, rows = store.files().append(members(rng, centres, spread, labels))
        areas = rng.integers(50, 50_000, count)
        # Each image's segments are consecutive, as the indexer commits them (one image per transaction).
        image_ids = (np.arange(lo, lo + count) * images) // n + 1
        with store.sessions.begin() as s:
            s.execute(
                insert(SegmentRecord),
                [
                    {
                        "id": lo + j + 1,
                        "image_id": int(image_ids[j]),
                        "x": 10,
                        "y": 20,
                        "w": 60,
                        "h": 40,
                        "area": int(areas[j]),
                        "rle_counts": rle,
                        "predicted_iou": 0.9,
                        "stability_score": 0.95,
                        "vec_chunk": int(chunks[j]),
                        "vec_row": int(rows[j]),
                    }
                    for j in range(count)
                ],
            )
        print(f"  stored {lo + count} segments ({time.perf_counter() - start:.0f} s)", flush=True)
    store.close()
    return time.perf_counter() - start


def exact_top(store: Store, queries: np.ndarray, keep, k: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact (scores, ids) of the top k for every query, streaming the embedding files
    once: among all segments, and among those whose ids ``keep`` says True of."""
    best = [(np.full((len(queries), k), -np.inf, np.float32), np.zeros((len(queries), k), np.int64)) for _ in range(2)]
    for ids, vectors in store.embeddings(batch=BATCH):
        scores = queries @ vectors.T
        for which, part in enumerate((scores, np.where(keep(ids), scores, -np.inf))):
            s = np.concatenate([best[which][0], part], axis=1)
            i = np.concatenate([best[which][1], np.broadcast_to(ids, part.shape)], axis=1)
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            best[which] = (np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1))
    orders = [np.argsort(-s, axis=1) for s, _ in best]
    return [(np.take_along_axis(s, o, 1), np.take_along_axis(i, o, 1)) for (s, i), o in zip(best, orders)]


def percentiles(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000
    return f"p50 {np.percentile(ms, 50):7.1f} ms  p99 {np.percentile(ms, 99):7.1f} ms"


def sweep(ix: SegmentIndex, queries: np.ndarray, truth: np.ndarray, picks: np.ndarray, settings: str) -> None:
    """Recall and latency of the compressed index as --nprobe and --rerank grow."""
    nlist = faiss.extract_index_ivf(ix.index.index).nlist
    print(f"recall against effort (nlist {nlist}):")
    for setting in settings.split():
        nprobe, rerank = (int(v) for v in setting.split(":"))
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            found.append([h.segment_id for h in ix.search_vector(q, 10, SearchFilters(nprobe=nprobe, rerank=rerank))])
            times.append(time.perf_counter() - t)
        recall = np.array([len(set(f) & set(t[:10].tolist())) / 10 for f, t in zip(found, truth)])
        print(
            f"  --nprobe {nprobe:<5} --rerank {rerank:<6}: {percentiles(times)}   recall@10 "
            + ", ".join(
                f"{kind} {recall[mask].mean():.3f}"
                for kind, mask in (("clustered", picks % 2 == 0), ("hard", picks % 2 == 1))
            ),
            flush=True,
        )


def recall_by_concept_size(
    ix: SegmentIndex, rng, centres: np.ndarray, spread: np.ndarray, n: int, per_size: int
) -> None:
    """Recall@10 at the index's defaults of queries whose concept has about 10, 100 or
    1,000 stored members (expected counts; the generator draws concepts by weight)."""
    expected = n * concept_weights(len(centres))
    picks = {size: of_size(n, len(centres), size, per_size) for size in (10, 100, 1000)}
    flat = np.concatenate(list(picks.values()))
    queries = members(rng, centres, spread, flat)
    (_, truth), _ = exact_top(ix.store, queries, lambda ids: np.zeros(len(ids), bool))
    print("recall@10 by the query concept's size (the defaults):")
    at = 0
    for size, chosen in picks.items():
        times, recall = [], []
        for q, t in zip(queries[at : at + len(chosen)], truth[at : at + len(chosen)]):
            start = time.perf_counter()
            found = {h.segment_id for h in ix.search_vector(q, 10)}
            times.append(time.perf_counter() - start)
            recall.append(len(found & set(t[:10].tolist())) / 10)
        at += len(chosen)
        got = np.array(recall)
        print(
            f"  ~{np.median(expected[chosen]):>5.0f} members ({expected[chosen].min():.0f}-"  # (a small --n: past 10)
            f"{expected[chosen].max():.0f} expected): "
            f"clustered {got[chosen % 2 == 0].mean():.3f}, hard {got[chosen % 2 == 1].mean():.3f}   "
            f"{percentiles(times)}",
            flush=True,
        )


def held_out(centres: np.ndarray, spread: np.ndarray, count: int) -> dict[str, np.ndarray] | None:
    """``count`` queries of the benchmark's own kind for calibration, from another seed
    than the measured ones: by kind, clustered and hard as they come (about half each)."""
    if count <= 0:
        return None
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(centres), count)
    queries = members(rng, centres, spread, picks)
    return {"clustered": queries[picks % 2 == 0], "hard": queries[picks % 2 == 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--concepts", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--folder", type=Path, default=None, help="where to build (default: a temporary folder, removed)"
    )
    parser.add_argument(
        "--faiss-device", default=None, help="cpu or cuda for FAISS (default: a GPU where faiss has one)"
    )
    parser.add_argument(
        "--exact-up-to",
        type=int,
        default=None,
        help="override the exact-search threshold (to try the compressed index on a small N)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="with --folder: query the index built there by an earlier run"
    )
    parser.add_argument(
        "--store-only", action="store_true", help="with --folder: build the database and embedding files, then stop"
    )
    parser.add_argument(
        "--reindex", action="store_true", help="with --reuse: rebuild the FAISS index (timed) before the queries"
    )
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="with --reuse: measure the index built there again (no rebuild), timed, before the queries",
    )
    parser.add_argument(
        "--calibration-queries",
        type=int,
        default=200,
        help="held-out queries of each run's generator that calibration measures with (0: image queries only)",
    )
    parser.add_argument(
        "--sweep",
        default="16:200 64:1000 256:4000 1024:10000",
        help="NPROBE:RERANK settings to measure recall at (compressed index only)",
    )
    parser.add_argument(
        "--per-size",
        type=int,
        default=20,
        help="queries for each concept size (about 10, 100, 1,000 members) whose recall is reported (0: none)",
    )
    args = parser.parse_args()
    if args.exact_up_to is not None:
        index_choice.EXACT_UP_TO = args.exact_up_to
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres, spread = concepts(rng, args.concepts)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="usesearch-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        store_s = index_s = 0.0
        if args.reuse and (folder / DB_FILE).is_file():
            print(f"reusing the segments in {folder}" + ("" if args.reindex else " and their index"))
        else:
            print(f"building {args.n} segments in {folder}")
            store_s = build(folder, args.n, rng, centres, spread)
            if args.store_only:
                return
        if not args.reuse or args.reindex:
            start = time.perf_counter()
            reindex(folder, faiss_device=args.faiss_device, queries=held_out(centres, spread, args.calibration_queries))
            index_s = time.perf_counter() - start
        elif args.recalibrate:
            start = time.perf_counter()
            recalibrate(folder, queries=held_out(centres, spread, args.calibration_queries))
            print(f"calibrated again in {time.perf_counter() - start:.0f} s")
        ix = SegmentIndex.open(folder, device="cpu", faiss_device=args.faiss_device)
        if args.reuse:  # the figures per segment are of the index reopened, whatever --n says
            args.n = int(ix.index.ntotal)
        picks = rng.integers(0, args.concepts, args.queries)
        queries = members(rng, centres, spread, picks)  # near a concept but not a stored vector, like a text query
        if not ix.index.exact:  # re-scoring's locations: asked of the catalog per search, then held in memory
            times = []
            for q in queries:
                t = time.perf_counter()
                ix.search_vector(q, 10)
                times.append(time.perf_counter() - t)
            start = time.perf_counter()
            ix.hold_locations()
            print(
                f"locations of re-scored candidates: from the catalog, query {percentiles(times)}; "
                f"held in memory ({time.perf_counter() - start:.1f} s to build, "
                f"{ix.stats()['location_map_bytes'] / args.n:.1f} B per segment): see below"
            )
        stats = ix.stats()
        print(f"index: {stats['index_choice']}")
        if ix.calibration is not None:
            print(f"calibration ({ix.calibration.seconds:.1f} s): {stats['recall']}")
        built = "none (--reuse)" if args.reuse else f"store + embedding files {store_s:.0f} s, FAISS index and "
        built += "" if args.reuse else f"calibration {index_s:.0f} s"
        print(f"build: {built} (faiss {stats['faiss_version']} on {stats['faiss_device']})")
        in_memory = faiss.serialize_index(ix.index.index).nbytes  # the codes, ids and codebooks that searches hold
        on_disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(
            f"bytes per segment: {in_memory / args.n:.1f} in memory (FAISS), {on_disk / args.n:.0f} on disk "
            f"(database {(folder / DB_FILE).stat().st_size / args.n:.0f}, "
            f"embeddings {stats['bytes_embeddings'] / args.n:.0f}, "
            f"FAISS {(folder / FAISS_FILE).stat().st_size / args.n:.0f})"
        )

        images = max(1, args.n // 100)

        def in_folder(ids: np.ndarray) -> np.ndarray:  # the images of PATH_1PC (see build)
            return ((ids - 1) * images // args.n) % 100 == 7

        (truth_s, truth), (_, truth_path) = exact_top(ix.store, queries, in_folder)
        gap = truth_s[:, 9] - truth_s[:, 99]
        for kind, mask in (("clustered", picks % 2 == 0), ("hard", picks % 2 == 1)):
            print(
                f"{kind:>9} queries: {mask.sum()}, "
                f"exact 10th - 100th neighbour cosine gap median {np.median(gap[mask]):.3f}"
            )
        measured: dict[str, float] = {}
        p50, found_plain = 0.0, []
        for label, filters, exact in (
            ("no filter", SearchFilters(), truth),
            ("--path (1% of images)", SearchFilters(path=PATH_1PC), truth_path),
            ("--per-image", SearchFilters(per_image=True), None),  # no exact answer to compare with
        ):
            times, found = [], []
            for q in queries:
                t = time.perf_counter()
                hits = ix.search_vector(q, 10, filters)
                times.append(time.perf_counter() - t)
                found.append([h.segment_id for h in hits])
            line = f"query, {label:<22}: {percentiles(times)}"
            if exact is not None:
                recall = np.array([len(set(f) & set(t[:10].tolist())) / 10 for f, t in zip(found, exact)])
                line += "   recall@10 " + ", ".join(
                    f"{kind} {recall[mask].mean():.3f}"
                    for kind, mask in (("clustered", picks % 2 == 0), ("hard", picks % 2 == 1))
                )
            print(line, flush=True)
            if label == "no filter" and exact is not None:
                p50, found_plain = float(np.percentile(times, 50) * 1000), found
                measured = {
                    kind: float(recall[mask].mean())
                    for kind, mask in (("clustered", picks % 2 == 0), ("hard", picks % 2 == 1))
                }
        if ix.calibration is not None:
            cal = ix.calibration
            print(f"calibrated defaults: nprobe {cal.nprobe}, rerank {cal.rerank}; recall@10 predicted / measured:")
            mean = float(np.mean([len(set(f) & set(t[:10].tolist())) / 10 for f, t in zip(found_plain, truth)]))
            for kind, value in [*measured.items(), ("mean", mean)]:
                predicted = cal.recall if kind == "mean" else cal.recall_kinds.get(kind)
                shown = "-" if predicted is None else f"{predicted:.3f}"
                print(f"  {kind:>9}: {shown} / {value:.3f}", flush=True)
            print(f"  p50 predicted {cal.p50_ms:.1f} ms / measured {p50:.1f} ms ({cal.note or 'image queries'})")
        if not ix.index.exact:
            sweep(ix, queries, truth, picks, args.sweep)
        if args.per_size:
            recall_by_concept_size(ix, rng, centres, spread, args.n, args.per_size)
        ix.close()
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
