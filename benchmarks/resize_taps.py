"""A new photo shape's resize taps (``usesearch.masks.separable_resize.axis_taps``, and
the cells built on them): probed from ``F.interpolate`` with four columns, against the
two dense resize matrices multiplied that they replace (the same taps, bit for bit:
``tests/test_separable_resize.py``). Each new shape costs this once an axis, in the
model thread, before the photo's candidates are scored.

    python benchmarks/resize_taps.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.test_separable_resize's dense reference
from tests.test_separable_resize import _dense_taps  # noqa: E402
from usesearch.masks import cell_grid, separable_resize  # noqa: E402

# (canvas side, low-res side, the photo's part of the canvas, the photo's side): SAM's 1024
# canvas, photos of 768 and 1024 px (one resize each way), and 3000-5472 px camera photos.
SHAPES = [(1024, 256, 768, 768), (1024, 256, 1024, 1024), (1024, 256, 768, 3000), (1024, 256, 1024, 4000)]


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"{'axis (canvas, low, part -> side)':<34} {'dense ms':>9} {'probed ms':>10} {'cells ms':>9}")
    for shape in SHAPES:
        dense = best_of(args.repeats, lambda: _dense_taps(*shape))
        probed = best_of(args.repeats, lambda: separable_resize._axis_taps(*shape))

        def cells():
            cell_grid.axis_cells.cache_clear()
            separable_resize.axis_taps.cache_clear()
            cell_grid.axis_cells(*shape, cpu)

        print(f"{str(shape):<34} {dense * 1e3:>9.1f} {probed * 1e3:>10.1f} {best_of(args.repeats, cells) * 1e3:>9.1f}")


if __name__ == "__main__":
    main()
