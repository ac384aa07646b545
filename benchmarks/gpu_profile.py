"""Where a photo's GPU time goes inside SAM's automatic masks: torch's profiler over
the generator on one 1024x768 photo (the paper's ViT-H, 32x32 points, random weights,
thresholds 0, ``--masks-per-photo`` kept, the mask logits shaped into blobs as
``index_throughput.py`` shapes them), after warm-up. Prints the kernels that took the
most device time, and the generator's own clocks per photo. The shaping's own kernels
(a bicubic upsample, an amax, ~4 ms a photo on an H200) are the benchmark's, not SAM's.

    python benchmarks/gpu_profile.py [--arch vit_h] [--points-per-side 32] [--rows 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).parent))
from index_throughput import blob_decoder  # noqa: E402  (a benchmark beside this one)

from usesearch.masks.amg import SamMaskGenerator  # noqa: E402
from usesearch.masks.sam import build_sam  # noqa: E402
from usesearch.masks.sam_fast import speed_up  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_h")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--masks-per-photo", type=int, default=100)
    parser.add_argument("--photos", type=int, default=3, help="photos profiled, after two of warm-up")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    sam = speed_up(build_sam(args.arch)).to(args.device)
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((1024, 768)))
    generator = SamMaskGenerator(
        sam,
        points_per_side=args.points_per_side,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        masks_per_photo=args.masks_per_photo,
    )
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with blob_decoder(valid=(0.75, 1.0)):
        for _ in range(2):
            generator.generate(photo)
        generator.seconds = dict.fromkeys(generator.seconds, 0.0)
        start = time.perf_counter()
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(args.photos):
                generator.generate(photo)
        wall = (time.perf_counter() - start) / args.photos
    clocks = {k: 1000 * v / args.photos for k, v in generator.seconds.items()}
    print(
        f"SAM {args.arch} on {args.device}, {args.points_per_side}x{args.points_per_side} points, "
        f"{args.masks_per_photo} masks a photo, autocast {generator.autocast}: {1000 * wall:.1f} ms a photo "
        f"under the profiler; clocks (ms a photo): " + ", ".join(f"{k} {v:.1f}" for k, v in clocks.items())
    )
    events = profile.key_averages()
    key = "self_device_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    try:
        print(events.table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    except (AttributeError, KeyError):  # an older torch's spelling
        print(events.table(sort_by=key.replace("device", "cuda"), row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
