"""Latency of the web app as a browser sees it: over HTTP, through uvicorn, warm process.

Indexes sample photos (felzenszwalb masks, so no SAM cost) with a preset, serves the
index from a separate process (as `usesearch serve` does; random weights for real
presets), and times each API call and a whole results page (the search plus its 24
tiles fetched 6 at a time, as a browser does).

    python benchmarks/serve_latency.py [--preset tiny] [--images 16] [--side 1024] [--repeats 30]

Last, text searches are timed while another client's region search of a 48 MP upload
holds SAM: they must not wait for it (the text tower has a lock of its own).
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_throughput import random_weights, write_photos  # noqa: E402

from usesearch.indexer import IndexOptions, index_paths  # noqa: E402
from usesearch.indexer.web import serve  # noqa: E402
from usesearch.models import presets  # noqa: E402

WORDS = "red green blue small large round striped wooden metal shiny dog cat cup face rocket coin sky tree".split()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def report(name: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    print(f"{name:<44} p50 {statistics.median(samples):8.1f} ms   p95 {p95:8.1f} ms   (n={len(samples)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", nargs=2, metavar=("DB", "PORT"), help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    presets.PRESETS[args.preset] = random_weights(presets.get_preset(args.preset))
    if args.serve:
        serve(args.serve[0], port=int(args.serve[1]))
        return

    with tempfile.TemporaryDirectory() as tmp:
        photos, db = Path(tmp) / "photos", Path(tmp) / "db"
        write_photos(photos, args.images, args.side)
        options = IndexOptions(preset=args.preset, masker="felzenszwalb", masker_options={"max_masks": 64})
        indexed = index_paths([photos], db, options)
        print(
            f"{args.images} images of {args.side}x{args.side * 3 // 4}, {indexed.segments} segments, "
            f"preset {args.preset}, "
            f"{args.threads} threads"
        )

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        started = time.perf_counter()
        command = [
            sys.executable,
            __file__,
            "--preset",
            args.preset,
            "--threads",
            str(args.threads),
            "--serve",
            str(db),
            str(port),
        ]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/info").raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.05)
        print(f"{'startup (process, imports, model load)':<44} {1000 * (time.perf_counter() - started):8.1f} ms")

        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=120) as client:

            def get(url: str, **params) -> httpx.Response:
                response = client.get(url, params=params)
                response.raise_for_status()
                return response

            queries = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]} {i}" for i in range(args.repeats)]
            report("search, new text (k=24)", [timed(lambda q=q: get("/api/search", q=q)) for q in queries])
            report("search, repeated text (k=24)", [timed(lambda q=q: get("/api/search", q=q)) for q in queries])
            hits = get("/api/search", q="a red cup", k=24).json()["hits"]
            ids = [h["segment_id"] for h in hits]
            report(
                "more like this (k=24)",
                [timed(lambda i=i: get(f"/api/segments/{i}/similar")) for i in ids[: args.repeats]],
            )
            report("segment metadata + RLE", [timed(lambda i=i: get(f"/api/segments/{i}")) for i in ids])
            report("mask.png (full resolution)", [timed(lambda i=i: get(f"/api/segments/{i}/mask.png")) for i in ids])
            report(
                "tile.png 192 px (image decoded, cached)",
                [timed(lambda i=i: get(f"/api/segments/{i}/tile.png")) for i in ids],
            )
            image_ids = sorted({h["image_id"] for h in hits})
            report(
                f"thumbnail.jpg {min(1024, args.side)} px",
                [timed(lambda i=i: get(f"/api/images/{i}/thumbnail.jpg")) for i in image_ids],
            )
            report(
                f"overlay.png {min(1024, args.side)} px",
                [timed(lambda i=i: get(f"/api/segments/{i}/overlay.png")) for i in ids],
            )

            def page(q: str) -> None:
                found = get("/api/search", q=q, k=24).json()["hits"]
                with ThreadPoolExecutor(6) as pool:  # a browser's connections per host
                    list(pool.map(lambda h: get(h["tile_url"]), found))

            report(
                "results page: search + 24 tiles",
                [timed(lambda q=q: page(q)) for q in queries[: max(5, args.repeats // 3)]],
            )

            # Text searches while another client's region search of a big upload holds SAM
            # (a plain 48 MP PNG: a small file, all the pixels' work).
            upload = io.BytesIO()
            Image.new("RGB", (8000, 6000), (120, 90, 60)).save(upload, "PNG")
            with ThreadPoolExecutor(1) as pool:
                running = pool.submit(
                    client.post, "/api/region-search", params={"point": "4000,3000"}, content=upload.getvalue()
                )
                beside: list[float] = []
                while not running.done():  # new texts, one after another, for as long as it runs
                    beside.append(timed(lambda n=len(beside): get("/api/search", q=f"beside a region {n}")))
                running.result().raise_for_status()
            report("search, new text, beside a 48 MP region search", beside)
            print(f"{'  ... the slowest of them':<44} {max(beside):8.1f} ms")
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
