"""What a re-run of ``index`` costs over a folder it has indexed: many small photos (the
models are not the cost here), indexed once, then indexed again with nothing new, and
again after the stats are dropped (an index from before they were kept: each file read
and hashed, its stat noted), with the time per 10,000 photos.

    python benchmarks/rerun_cost.py [--photos 3000] [--folder DIR]

A helper's first measure, 20,400 photos of 8-32 px, tiny preset, 2 cores: a no-op
re-run took 16.8 s when the catalog was asked once a photo and every file read and
hashed; 6.9 s with the catalog read 500 paths a query; 3.1 s once each file's stat was
kept (``indexer/known_images.py``).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from usesearch.indexer import IndexOptions, index_paths
from usesearch.indexer.known_images import RACY_NS

OPTIONS = IndexOptions(preset="tiny", masker="felzenszwalb", masker_options={"max_masks": 4})


def write(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        side = int(rng.integers(8, 33))
        path = folder / f"a{i // 1000:03d}" / f"b{i // 100 % 10:02d}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def timed(photos: Path, db: Path, label: str, count: int) -> None:
    start = time.perf_counter()
    report = index_paths([photos], db, OPTIONS)
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.1f} s ({10_000 * seconds / count:.1f} s per 10k photos); skipped {report.skipped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=3000)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    root = args.folder or Path(tempfile.mkdtemp(prefix="usesearch-rerun-"))
    photos, db = root / "photos", root / "db"
    write(photos, args.photos)
    time.sleep(RACY_NS / 1e9)  # files changed within this of their read keep no stat
    timed(photos, db, "first run", args.photos)
    timed(photos, db, "re-run, nothing new", args.photos)
    with sqlite3.connect(db / "segments.sqlite") as conn:
        conn.execute("update images set file_stat = null")  # as an index from before stats were kept
    timed(photos, db, "re-run, every file read and hashed (its stat noted)", args.photos)
    timed(photos, db, "re-run, nothing new", args.photos)
    print(f"folder: {root}")


if __name__ == "__main__":
    main()
