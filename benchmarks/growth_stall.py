"""How long a run's writer stands still when the collection outgrows its index type.

The rebuild into the type the size calls for (``indexer/growth.py``) ran in the writer's
thread: every model waited while it read the embedding files, trained and filled the
new index. It now runs in a thread of its own; the writer only starts it and, once it
is built, takes in what was committed meanwhile. This builds a store of N segments
(768-d, no models: ``scale.build``) whose exact index is outgrown, then times:
  * the rebuild as the writer ran it (``vectors.rebuild``): the stall before;
  * the writer's part now: starting the build, then, after --commits more segments
    were committed beside it, the catch-up that adds them (the file write, the same
    both ways, is left out).

    python benchmarks/growth_stall.py --n 200000 --commits 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from scale import DIM, build, concepts, members
from sqlalchemy import insert

from usesearch.indexer import IndexOptions, growth, index_choice, vectors
from usesearch.indexer.records import SegmentRecord
from usesearch.indexer.writer import Writer


def commit_more(store, n: int, rng, centres, spread) -> None:
    """``n`` segments more on the last image, as the writer's commits add them."""
    first = store.max_segment_id() + 1
    chunks, rows = store.files().append(members(rng, centres, spread, rng.integers(0, len(centres), n)))
    with store.sessions.begin() as s:
        s.execute(
            insert(SegmentRecord),
            [
                {
                    "id": first + j,
                    "image_id": 1,
                    **dict(x=0, y=0, w=8, h=8, area=64, rle_counts="0", predicted_iou=0.9, stability_score=0.9),
                    "vec_chunk": int(chunks[j]),
                    "vec_row": int(rows[j]),
                }
                for j in range(n)
            ],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--commits", type=int, default=20_000, help="segments committed while the index is built")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres, spread = concepts(rng, 2_000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "db"
        folder.mkdir()
        print(f"building a store of {args.n} segments ...", flush=True)
        build(folder, args.n, rng, centres, spread)
        index_choice.EXACT_UP_TO = args.n // 2  # outgrown: the next grow builds an IVF
        with Writer(folder, IndexOptions(faiss_device="cpu"), None) as writer:
            factory = index_choice.choose(writer.index.ntotal, DIM).factory
            start = time.perf_counter()
            vectors.rebuild(writer.store, DIM, factory, "cpu", writer.info.shard_size)
            before = time.perf_counter() - start
            print(f"before: the writer stood still {before:.1f} s rebuilding {args.n} segments into {factory}")

            start = time.perf_counter()
            writer.grow()
            started = time.perf_counter() - start
            build_thread = writer.growth.build
            assert isinstance(build_thread, growth.Build)
            commit_more(writer.store, args.commits, rng, centres, spread)  # the run goes on meanwhile
            while not build_thread.done():
                time.sleep(0.05)
            built = time.perf_counter() - start
            writer.write = lambda: None  # the file write costs the same both ways
            start = time.perf_counter()
            writer.grow()
            caught_up = time.perf_counter() - start
            assert writer.info.factory == factory and writer.index.ntotal == args.n + args.commits
            print(
                f"now: the writer stood still {started * 1e3:.0f} ms to start the build and {caught_up:.2f} s to "
                f"take in {args.commits} segments committed meanwhile; the build took {built:.1f} s beside the run"
            )


if __name__ == "__main__":
    main()
