"""The backbones' input preparation per photo, on the CPU: what the model thread did
before each backbone pass (a letterbox per backbone: resize, normalise) against
what it does now (``USE.pixels``: one resize per distinct size, normalised where
the model runs; on a GPU the resize itself runs in the embedder's thread while
SAM computes, and only the uint8 upload stays in line).

    python benchmarks/input_prep.py [--presets l14-336,b16] [--side 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from skimage import data

from usesearch.models import model
from usesearch.models.presets import get_preset

CLIP_MEAN_STD = ((0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758))
DINO_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def letterbox_per_backbone(rgb, preset) -> tuple[torch.Tensor, torch.Tensor]:
    """As before: each backbone letterboxed on its own (the resize done twice when the sizes match)."""
    from usesearch.models.inputs import padded, resized

    return tuple(  # type: ignore[return-value]
        padded(torch.from_numpy(resized(rgb, size)), size, *mean_std)
        for size, mean_std in ((preset.clip.image_size, CLIP_MEAN_STD), (preset.dino.image_size, DINO_MEAN_STD))
    )


def per_photo_ms(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="l14-336,b16")
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rgb = np.array(Image.fromarray(data.astronaut()).resize((args.side, args.side * 3 // 4)))
    print(f"one {rgb.shape[1]}x{rgb.shape[0]} photo, {args.threads} thread(s), ms per photo")
    for name in args.presets.split(","):
        preset = get_preset(name)
        use = SimpleNamespace(preset=preset, clip_mean_std=CLIP_MEAN_STD, dino_mean_std=DINO_MEAN_STD)
        for method in ("resize_for_backbones", "pixels_from"):
            setattr(use, method, getattr(model.USE, method).__get__(use))
        small = use.resize_for_backbones(rgb)
        before = per_photo_ms(lambda: letterbox_per_backbone(rgb, preset), args.repeat)
        now = per_photo_ms(lambda: model.USE.pixels(use, rgb), args.repeat)
        resize = per_photo_ms(lambda: use.resize_for_backbones(rgb), args.repeat)
        print(
            f"{name} (CLIP {preset.clip.image_size} px, DINOv2 {preset.dino.image_size} px): "
            f"a letterbox per backbone {before:.1f}; resized once per size + normalised {now:.1f} "
            f"(of which the resize {resize:.1f}: on a GPU in the embedder's thread, beside SAM; "
            f"left in line there: the uint8 upload, {sum(p.nbytes for p in small.values()) / 1e6:.2f} MB)"
        )


if __name__ == "__main__":
    main()
