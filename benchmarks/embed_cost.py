"""Cost of embedding one image's segments: USE head vs crop baseline (issue: foundation).

Builds the b16 architectures with random weights (compute does not depend on weight
values), so it runs offline. Prints seconds per image for N masks and the ratio,
plus what each side spends its time on.

    python benchmarks/embed_cost.py [--preset b16] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from skimage import data
from skimage.transform import resize

from usesearch.models.backbones import build_clip, build_dino, seeded
from usesearch.models.model import USE, CropEmbedder, USEEmbedder
from usesearch.models.presets import get_preset


def random_weight_preset(name: str):
    preset = get_preset(name)
    return replace(preset, clip=replace(preset.clip, pretrained=None), dino=replace(preset.dino, pretrained=False))


def blob_masks(h: int, w: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n elliptical masks of varied size and place, like SAM's mix of parts and wholes."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    ry, rx = rng.uniform(0.03, 0.35, n) * h, rng.uniform(0.03, 0.35, n) * w
    return ((yy[None] - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
        (xx[None] - cx[:, None, None]) / rx[:, None, None]
    ) ** 2 <= 1


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="b16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="10,50,100")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    preset = random_weight_preset(args.preset)
    device = torch.device("cpu")
    clip = build_clip(preset.clip, preset.name)
    with seeded(0):
        use = USEEmbedder(USE(preset, clip, build_dino(preset.dino, preset.name)), clip, device, "random")
    crop = CropEmbedder(preset, build_clip(preset.clip, preset.name, native_size=True), device)

    rgb = (resize(data.astronaut(), (480, 640), preserve_range=True)).astype(np.uint8)
    rng = np.random.default_rng(0)
    print(f"preset {preset.name} (random weights), image 640x480, {args.threads} threads, best of {args.repeats}")
    print(
        f"USE: CLIP {preset.clip.model_name} at {preset.clip.image_size} px + DINOv2 at {preset.dino.image_size} px, "
        f"grid {preset.grid}x{preset.grid}; crop: CLIP at {crop.clip.native_image_size} px per mask"
    )

    use.embed_segments(rgb, blob_masks(480, 640, 2, rng))  # warm-up
    encoder_s = best_of(lambda: use.image_features(rgb), args.repeats)
    print(f"USE image encoder (once per image): {encoder_s:.3f} s")
    print(f"{'N':>5} {'use s':>8} {'(head s)':>9} {'crop s':>8} {'crop/use':>9}")
    for n in (int(s) for s in args.sizes.split(",")):
        masks = blob_masks(480, 640, n, rng)
        z = use.image_features(rgb)
        use_s = best_of(lambda: use.embed_segments(rgb, masks), args.repeats)
        head_s = best_of(lambda: use.embed_from_features(z, masks, (480, 640)), args.repeats)
        crop_s = best_of(lambda: crop.embed_segments(rgb, masks), max(1, args.repeats - 1))
        print(f"{n:>5} {use_s:>8.3f} {head_s:>9.3f} {crop_s:>8.3f} {crop_s / use_s:>8.1f}x")


if __name__ == "__main__":
    main()
