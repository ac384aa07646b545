"""What the commit thread's store write costs a photo, one photo a transaction against
a GPU's group of photos in one (``Store.save_images``): each photo's 100 segments and
their vectors (768-d) into a fresh catalog, SQLite in a temporary folder or the
PostgreSQL database ``--db-url`` names (an empty one: the benchmark creates its tables).

Each transaction costs its round trips, the server's log flush, and two fsyncs of
the embedding files; a group pays them once for all its photos.

    python benchmarks/store_writes.py [--photos 200] [--segments 100] [--groups 1,4,8]
        [--db-url postgresql+psycopg://...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from usesearch.indexer.folder import db_url_for
from usesearch.indexer.image_writes import PhotoWrite
from usesearch.indexer.records import IndexInfo
from usesearch.indexer.store import Store

DIM = 768


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="photos a measurement")
    parser.add_argument("--segments", type=int, default=100, help="segments a photo")
    parser.add_argument("--groups", default="1,4,8", help="photos a transaction, comma-separated")
    parser.add_argument("--db-url", default=None, help="an empty PostgreSQL database (default: SQLite)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each group size, interleaved")
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    segments = [
        dict(x=i, y=i, w=30, h=40, area=900 + i, rle_counts="x" * 120, predicted_iou=0.9, stability_score=0.95)
        for i in range(args.segments)
    ]
    vectors = np.random.default_rng(0).standard_normal((args.segments, DIM)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "db"
        db.mkdir()
        store = Store(db_url_for(db, args.db_url), folder=db)
        store.claim()
        info = dict(preset="b16", embedder="use", fingerprint="bench", head=None, dim=DIM, masker="sam")
        store.set_info(IndexInfo(**info, masker_params={}, factory="IDMap2,Flat", index_mode="auto"))
        made = 0

        def write(photos: int, group: int) -> float:
            nonlocal made
            start = time.perf_counter()
            for _ in range(photos // group):
                batch = []
                for i in range(made, made + group):
                    batch.append(
                        PhotoWrite(f"/p/{i}.jpg".encode(), f"/p/{i}.jpg", f"{i:064x}", (768, 1024), segments, vectors)
                    )
                made += group
                store.save_images(batch)
            return (time.perf_counter() - start) * 1000 / (photos // group * group)

        write(20, 1)  # warm: tables' first pages, the connection pool, the first chunk file
        times: dict[int, list[float]] = {g: [] for g in groups}
        for _ in range(args.repeat):
            for group in groups:
                times[group].append(write(args.photos, group))
        store.close()
    kind = "PostgreSQL" if args.db_url else "SQLite"
    print(f"{kind}, {args.segments} segments a photo of {DIM}-d vectors, {args.photos} photos a measurement")
    for group in groups:
        runs = " ".join(f"{t:.1f}" for t in times[group])
        median = statistics.median(times[group])
        print(f"  {group:>2} photos a transaction: {median:6.2f} ms a photo (median; runs {runs})")


if __name__ == "__main__":
    main()
