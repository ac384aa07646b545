"""Indexing throughput (images/s) and the share of wall time spent outside the models.

Uses random weights for b16 (compute does not depend on weight values), so it runs
offline. "Outside the models" is decode + hashing + RLE + store + FAISS: everything
in the per-image loop except the masker and the embedder. "Masker post" is the share
of the masker's own time that is not SAM's forward passes (image encoder, prompt
encoder and mask decoder): upscaling, scores, NMS, RLE.

    python benchmarks/index_throughput.py [--presets tiny,b16] [--images 8] [--points-per-side 16]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch
from PIL import Image
from skimage import data

from indexer import IndexOptions, index_paths
from usesearch import presets

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "coins")


def random_weights(preset):
    """Same architecture, weights not loaded (SAM included)."""
    return replace(
        preset,
        clip=replace(preset.clip, pretrained=None),
        dino=replace(preset.dino, pretrained=False),
        sam=replace(preset.sam, checkpoint=None),
    )


def write_photos(folder: Path, n: int, side: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = Image.fromarray(getattr(data, NAMES[i % len(NAMES)])()).convert("RGB")
        photo = photo.resize((side, side * 3 // 4)).rotate(7 * i)  # distinct contents
        photo.save(folder / f"{i:04d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,b16")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=640)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--masker", default="sam", help="sam (the paper's) or felzenszwalb")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        write_photos(photos, args.images, args.side)
        print(f"{args.images} images of {args.side}x{args.side * 3 // 4}, masker {args.masker}, {args.threads} threads")
        print(f"{'preset':>8} {'img/s':>8} {'seg/s':>8} {'segments':>9} {'loop s':>8} {'model s':>8} {'outside':>8} "
              f"{'masker s':>9} {'masker post':>12}")
        for name in args.presets.split(","):
            patched = {**presets.PRESETS, name: random_weights(presets.PRESETS[name])}
            # Random-weight SAM masks never pass SAM's quality thresholds; turn them
            # off so the number of segments (and the work per segment) is realistic.
            masker_options = (
                {"points_per_side": args.points_per_side, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
                if args.masker == "sam" else {}
            )
            embedder = "use" if name == "tiny" else "crop"
            if name != "tiny":
                # A seeded random head so the 'use' path (the product's) is what is timed.
                patched[name] = replace(patched[name], head=replace(patched[name].head, seeded_random=True))
                embedder = "use"
            with mock.patch.dict(presets.PRESETS, patched):
                options = IndexOptions(preset=name, embedder=embedder, masker=args.masker, masker_options=masker_options)
                report = index_paths([photos], Path(tmp) / f"db-{name}", options)
            outside = 1 - report.model_seconds / report.loop_seconds
            post = (f"{1 - report.masker_forward_seconds / report.masker_seconds:>11.1%}"
                    if report.masker_forward_seconds else f"{'n/a':>11}")
            print(
                f"{name:>8} {report.done / report.loop_seconds:>8.3f} {report.segments / report.loop_seconds:>8.1f} "
                f"{report.segments:>9} {report.loop_seconds:>8.1f} {report.model_seconds:>8.1f} {outside:>7.1%} "
                f"{report.masker_seconds:>9.1f} {post}"
            )


if __name__ == "__main__":
    main()
