"""SAM's automatic masks on large photos on a CPU: seconds and peak memory per photo size.

SAM scores each candidate on its logits upscaled to the photo's full size, so memory
grows with the photo's pixels times the masks upscaled at once. Each size runs in a
process of its own (peak resident memory is a process's). The tiny preset's SAM (the
cost here is the upscaling, which does not depend on the model), a point grid, and
``masks_per_photo`` so that random weights keep a realistic number of masks.

    python benchmarks/large_photo.py [--megapixels 1 12 49] [--points-per-side 16] [--masks 100] [--compiled]

Two photos a size: the first pays any compile (a cold one: torch's compile cache is
fresh), the next is the steady cost. By default the generator chooses as a CPU does
(a photo past the canvas of ``candidate_scoring.COMPILE_PIXELS`` or more scored compiled from the
first one, where a C++ compiler is found); ``--compiled``: candidates scored by
``CompiledScores`` at every size, as ``--compile`` has it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(megapixels: float, points_per_side: int, masks: int, compiled: bool) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    from usesearch.masks.amg import SamMaskGenerator
    from usesearch.masks.sam import load_sam
    from usesearch.models.presets import get_preset

    torch.set_num_threads(2)
    side = int((megapixels * 1e6) ** 0.5)
    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((side * 4 // 3, side * 3 // 4), Image.BILINEAR))
    sam = load_sam(get_preset("tiny").sam, "tiny", None, torch.device("cpu"))
    generator = SamMaskGenerator(
        sam, points_per_side=points_per_side, pred_iou_thresh=-10, stability_score_thresh=-10, masks_per_photo=masks
    )
    from torch._inductor.utils import fresh_cache

    if compiled:  # as ``--compile`` has it
        generator.scoring.compile()
    seconds = []
    with fresh_cache():  # the first photo's compile is a cold one
        for _ in range(2):
            start = time.perf_counter()
            records = generator.generate(rgb)
            seconds.append(round(time.perf_counter() - start, 1))
    return {
        "megapixels": round(rgb.shape[0] * rgb.shape[1] / 1e6, 1),
        "masks": len(records),
        "first": seconds[0],
        "next": seconds[1],
        "scored": "compiled" if generator.scoring.compiled is not None else "eager",
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 12, 49])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--compiled", action="store_true", help="candidates scored compiled, as under --compile")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # a size, in this process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.points_per_side, args.masks, args.compiled)))
        return
    print(f"{'MP':>6} {'masks':>6} {'first s':>8} {'next s':>8} {'scored':>9} {'peak MB':>8}")
    for megapixels in args.megapixels:
        command = [sys.executable, __file__, "--one", str(megapixels), "--points-per-side", str(args.points_per_side)]
        compiled = ["--compiled"] if args.compiled else []
        done = subprocess.run([*command, "--masks", str(args.masks), *compiled], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{megapixels:>6} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{row['megapixels']:>6} {row['masks']:>6} {row['first']:>8} {row['next']:>8} "
            f"{row['scored']:>9} {row['peak_mb']:>8}"
        )


if __name__ == "__main__":
    main()
