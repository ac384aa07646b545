"""What a server pays to catch up with an indexer after a commit, on an existing index
(default: the 10M-segment index `scale.py` builds): comparing every FAISS id with every
catalog id (what each search paid after each commit before), against the one statement
that tells whether anything was removed (the highest id and the count, one snapshot).

    python benchmarks/reader_catch_up.py --db /tmp/h5_10m
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from usesearch.indexer import SegmentIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="an index folder (read only)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    ix = SegmentIndex.open(args.db)
    print(f"opened {args.db} in {time.perf_counter() - start:.1f} s: {ix.index.ntotal} vectors")
    for run in range(args.repeats):
        start = time.perf_counter()
        have, committed = ix.index.ids(), ix.store.segment_ids()
        np.setdiff1d(have, committed, assume_unique=True), np.setdiff1d(committed, have, assume_unique=True)
        every_id = time.perf_counter() - start
        start = time.perf_counter()
        high, count = ix.store.segments_now()
        check = time.perf_counter() - start
        print(
            f"run {run}: every id compared {every_id:.2f} s; highest id and count {1000 * check:.0f} ms "
            f"({'nothing removed' if count == ix.index.ntotal else 'a removal: every id compared'})"
        )
    ix.close()


if __name__ == "__main__":
    main()
