"""What ``usesearch info`` costs on a big catalog, part by part: the counts, the
segments by source (``label_summary``), the files gone (every file up to 100,000
photos, a sample past that) and the dead embedding bytes (one scan of the segments).

The index is synthetic (tests/test_index_scale.py's, no models): ``--segments`` rows
over ``--images`` photos whose paths do not exist, so every file is "gone" and each
stat is a quick miss; a real archive on a cold or network disk costs more per stat.

    python benchmarks/info_cost.py [--segments 1000000] [--images 200000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.test_index_scale's synthetic index

from tests.test_index_scale import synthetic_index  # noqa: E402
from usesearch.indexer import SegmentIndex  # noqa: E402
from usesearch.indexer.leftovers import embedding_leftovers, files_gone  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--keep", type=Path, help="build the index here (and reuse it when it exists)")
    args = parser.parse_args()
    db = args.keep or Path(tempfile.mkdtemp()) / "db"
    if not db.exists():
        start = time.perf_counter()
        synthetic_index(db, n=args.segments, dim=64, images=args.images)
        print(f"built {args.segments} segments over {args.images} photos in {time.perf_counter() - start:.0f} s")
    index = SegmentIndex.open(db)
    store = index.store
    parts = {
        "counts": store.counts,
        "segments by source": store.label_summary,
        "files gone": lambda: files_gone(store),
        "dead embedding bytes": lambda: embedding_leftovers(store),
        "info, all of it": lambda: index.stats(check_files=True),
    }
    for name, part in parts.items():
        start = time.perf_counter()
        result = part()
        note = f" ({result.number} gone of {result.checked} checked)" if name == "files gone" else ""
        print(f"{name:>22}: {time.perf_counter() - start:6.2f} s{note}")
    index.close()


if __name__ == "__main__":
    main()
