"""The reads an audit makes of a labelled dataset in the index, at archive scale: a
catalog of N annotation segments (80 classes, two splits, N/10 photos) written
straight into SQLite, then each read of ``annotation_lookups.py`` timed, with the
process's peak memory.

    python benchmarks/labelled_reads.py [--n 1000000] [--folder /tmp/labelled-1m]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

from usesearch.indexer.records import IndexInfo
from usesearch.indexer.store import Store

CLASSES = [f"class{i}" for i in range(80)]
CHUNK = 100_000  # rows per insert: the writing's own memory stays small


def build(folder: Path, n: int) -> Store:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    store = Store(f"sqlite:///{folder}/segments.sqlite", folder=folder)
    store.set_info(
        IndexInfo(
            preset="tiny",
            embedder="use",
            fingerprint="synthetic",
            head=None,
            dim=8,
            masker="none",
            masker_params={},
            factory="IDMap2,Flat",
        )
    )
    photos = max(1, n // 10)
    with store.engine.begin() as conn:
        for start in range(1, photos + 1, CHUNK):
            conn.exec_driver_sql(
                "INSERT INTO images (id, fs_path, path, sha256, width, height, status, attempts, proposals_made, "
                "updated) VALUES (?, ?, ?, ?, 640, 480, 'done', 1, 1, '2026-01-01')",
                [
                    (i, f"/p/{i}.jpg".encode(), f"/p/{i}.jpg", f"{i:064x}")
                    for i in range(start, min(start + CHUNK, photos + 1))
                ],
            )
        for start in range(1, n + 1, CHUNK):
            conn.exec_driver_sql(
                "INSERT INTO segments (id, image_id, x, y, w, h, area, rle_counts, vec_chunk, vec_row, source, "
                "annotation_id, category, iscrowd, split) VALUES (?, ?, 1, 1, 10, 10, 100, 'abc', ?, ?, "
                "'annotation', ?, ?, 0, ?)",
                [
                    (i, 1 + i % photos, i // CHUNK, i % CHUNK, i, CLASSES[i % 80], "val" if i % 5 == 0 else "train")
                    for i in range(start, min(start + CHUNK, n + 1))
                ],
            )
    return store


def timed(name: str, read) -> None:
    start = time.perf_counter()
    what = read()
    print(f"{name:<44} {time.perf_counter() - start:7.2f} s   {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="annotation segments")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/labelled-reads"))
    args = parser.parse_args()
    print(f"memory after imports {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    start = time.perf_counter()
    store = build(args.folder, args.n)
    print(f"catalog of {args.n:,} annotation segments written in {time.perf_counter() - start:.1f} s")
    timed("annotation_segments() streamed, all", lambda: f"{sum(map(len, store.annotation_segments())):,} rows")
    timed("annotation_segments(split='val')", lambda: f"{sum(map(len, store.annotation_segments(split='val'))):,}")
    timed("annotation_segments(category='class3')", lambda: sum(map(len, store.annotation_segments(category="class3"))))
    timed("label_summary()", lambda: store.label_summary()["annotations_by_split"])
    timed(
        "segment_locations_where(label='class3', split='train')",
        lambda: len(store.segment_locations_where(label="class3", split="train")),
    )
    timed("image_hashes()", lambda: f"{len(store.image_hashes()):,} photos")
    masks = min(10_000, store.max_segment_id() or 0)
    timed(f"segment_masks({masks:,} ids)", lambda: len(store.segment_masks(range(1, masks + 1))))
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
