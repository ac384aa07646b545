"""Where a photo's GPU time goes inside SAM's automatic masks: torch's profiler over
the generator on one 1024x768 photo (the paper's ViT-H, 32x32 points, random weights,
thresholds 0, ``--masks-per-photo`` kept, the mask logits shaped into blobs as
``index_throughput.py`` shapes them), after warm-up. Prints the kernels that took the
most device time, and the generator's own clocks per photo. The shaping's own kernels
(a bicubic upsample, an amax, ~4 ms a photo on an H200) are the benchmark's, not SAM's.
Each profile also says how busy the device was: its kernels' time a photo against the
wall time (the rest is the host's launches, synchronisations and Python).

``--compile``: SAM's image encoder compiled first, as a GPU archive's ``index`` run
compiles it by default (the warm-up pays it). ``--backbones PRESET``: then the same
for that preset's CLIP + DINOv2 + LLNs (random weights), a group of ``--group`` photos
a call as ``index`` runs them on a GPU (``USEEmbedder.features_ahead``), eager.

    python benchmarks/gpu_profile.py [--arch vit_h] [--points-per-side 32] [--rows 30] [--compile]
        [--backbones l14-336] [--group 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).parent))
from index_throughput import blob_decoder, random_weights  # noqa: E402  (a benchmark beside this one)

from usesearch.masks.amg import SamMaskGenerator  # noqa: E402
from usesearch.masks.sam import build_sam  # noqa: E402
from usesearch.masks.sam_compile import compile_encoder  # noqa: E402
from usesearch.masks.sam_fast import speed_up  # noqa: E402
from usesearch.models import presets  # noqa: E402
from usesearch.models.factory import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_h")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--masks-per-photo", type=int, default=100)
    parser.add_argument("--photos", type=int, default=3, help="photos profiled, after two of warm-up")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="SAM's encoder compiled, as index on a GPU")
    parser.add_argument("--backbones", default=None, help="also profile this preset's backbones")
    parser.add_argument("--group", type=int, default=4, help="photos a backbone call")
    args = parser.parse_args()
    torch.manual_seed(0)
    sam = speed_up(build_sam(args.arch)).to(args.device)
    if args.compile:
        compile_encoder(sam.image_encoder)
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((1024, 768)))
    generator = SamMaskGenerator(
        sam,
        points_per_side=args.points_per_side,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        masks_per_photo=args.masks_per_photo,
    )
    with blob_decoder(valid=(0.75, 1.0)):
        for _ in range(2):
            generator.generate(photo)
        generator.seconds = dict.fromkeys(generator.seconds, 0.0)
        profile, wall = profiled(lambda: generator.generate(photo), args.photos, args.device)
    clocks = {k: 1000 * v / args.photos for k, v in generator.seconds.items()}
    print(
        f"SAM {args.arch} on {args.device}, {args.points_per_side}x{args.points_per_side} points, "
        f"{args.masks_per_photo} masks a photo, autocast {generator.autocast}, encoder compiled {args.compile}: "
        f"{1000 * wall:.1f} ms a photo under the profiler; clocks (ms a photo): "
        + ", ".join(f"{k} {v:.1f}" for k, v in clocks.items())
    )
    report(profile, wall, args.photos, 1, args)
    if args.backbones:
        del sam, generator
        with mock.patch.dict(presets.PRESETS, {args.backbones: random_weights(presets.PRESETS[args.backbones])}):
            model = load_model(args.backbones, embedder="use", device=args.device)
        model.batch_backbones = True  # (a GPU's default; a CPU's too here, to profile the same call)
        photos = [photo.copy() for _ in range(args.group)]  # (features are kept by the photo object)
        for _ in range(2):
            model.features_ahead(photos)
        profile, wall = profiled(lambda: model.features_ahead(photos), args.photos, args.device)
        print(
            f"\n{args.backbones} backbones (CLIP + DINOv2 + LLNs) on {args.device}, {args.group} photos a call: "
            f"{1000 * wall / args.group:.1f} ms a photo under the profiler (resizing included)"
        )
        report(profile, wall, args.photos, args.group, args)


def profiled(run, times: int, device: str):
    """(torch's profile of ``run()`` ``times`` times, wall seconds a run)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(times):
            run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return profile, (time.perf_counter() - start) / times


def report(profile, wall: float, runs: int, photos_a_run: int, args) -> None:
    """How busy the device was over ``runs`` runs of ``wall`` seconds each, then the
    kernels that took the most of its time."""
    events = profile.key_averages()
    key = "self_device_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    if not hasattr(events[0], key):  # an older torch's spelling
        key = key.replace("device", "cuda")
    if args.device.startswith("cuda"):
        busy = sum(getattr(e, key) for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 1000
        print(
            f"device busy {busy / (runs * photos_a_run):.1f} ms a photo, {busy / 1000 / (wall * runs):.0%} of the "
            "wall time under the profiler"
        )
    print(events.table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
