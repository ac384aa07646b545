"""SAM automatic masks: segment-anything's stock generator vs ``usesearch.masks.amg``.

ViT-B architecture with random weights (compute does not depend on weight values),
one 1024-px photo, 16x16 and 32x32 point grids, quality thresholds at 0 (every
proposal kept, as happens with many real masks) and at the defaults. Prints the
model's own forward time (image encoder + prompt encoder, mask decoder and mask
upscaling for every batch: what either generator must spend in the model) and each
generator's wall time, with the ratios.

    python benchmarks/masker_cost.py [--sides 16 32] [--arch vit_b] [--device cpu|cuda] [--skip-stock]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.predictor import SamPredictor
from segment_anything.utils.amg import batch_iterator, build_point_grid
from skimage import data

from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.sam import SAM_TYPES, build_sam
from usesearch.masks.sam_fast import speed_up

SETTINGS = {"thresholds 0": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0), "defaults": {}}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def model_forward(
    sam, image: np.ndarray, side: int, points_per_batch: int, device: str, autocast: bool
) -> tuple[float, float]:
    """(encoder s, decoder s): what any grid-prompted generator must run in the model."""
    predictor = SamPredictor(sam)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        sync(device)
        start = time.perf_counter()
        predictor.set_image(image)
        sync(device)
        encoder = time.perf_counter() - start
        points = build_point_grid(side) * np.array(image.shape[:2])[None, ::-1]
        start = time.perf_counter()
        for (batch,) in batch_iterator(points_per_batch, points):
            coords = torch.as_tensor(predictor.transform.apply_coords(batch, image.shape[:2]), device=device)
            labels = torch.ones(len(coords), dtype=torch.int, device=device)
            predictor.predict_torch(coords[:, None], labels[:, None], multimask_output=True, return_logits=True)
        sync(device)
    return encoder, time.perf_counter() - start


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--arch", default="vit_b", choices=SAM_TYPES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument(
        "--autocast", action="store_true", help="bfloat16 encoder and decoder (ours; the model figure too)"
    )
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument(
        "--levers",
        action="store_true",
        help="SAM with sam_fast's levers (SDPA, shared image tokens), as load_sam gives",
    )
    parser.add_argument("--repeat", type=int, default=1, help="images per setting (images/s on a GPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam = build_sam(args.arch)
    sam = (speed_up(sam) if args.levers else sam).to(args.device).eval()
    photo = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.BICUBIC)
    image = np.asarray(photo)
    print(
        f"SAM {args.arch}, random weights, {image.shape[1]}x{image.shape[0]} photo, {args.device}, "
        f"{args.threads} threads, {args.points_per_batch} points per batch, autocast={args.autocast}, "
        f"levers={args.levers}"
    )
    model_forward(sam, image, 4, args.points_per_batch, args.device, args.autocast)  # warm up
    for side in args.sides:
        encoder, decoder = model_forward(sam, image, side, args.points_per_batch, args.device, args.autocast)
        model = encoder + decoder
        print(
            f"{side}x{side} points: model forward {model:.3f} s "
            f"(encoder {encoder:.3f} s, decoder + upscaling {decoder:.3f} s)"
        )
        for name, settings in SETTINGS.items():
            ours_gen = SamMaskGenerator(
                sam,
                points_per_side=side,
                points_per_batch=args.points_per_batch,
                autocast=args.autocast,
                # one path for every repeat: a CPU's generator would switch to compiled midway
                compiled_scores=torch.device(args.device).type == "cuda",
                **settings,
            )
            ours_s, masks = timed(lambda: [ours_gen.generate(image) for _ in range(args.repeat)][-1])
            ours_s /= args.repeat
            line = (
                f"  {name:<13} ours {ours_s:7.3f} s/image ({len(masks)} masks, {ours_s / model:.2f}x the model, "
                f"{1 / ours_s:.2f} images/s)"
            )
            if not args.skip_stock:
                stock_gen = SamAutomaticMaskGenerator(
                    sam, points_per_side=side, points_per_batch=args.points_per_batch, **settings
                )
                stock_s, stock_masks = timed(lambda: stock_gen.generate(image))
                line += (
                    f"   stock {stock_s:7.3f} s ({len(stock_masks)} masks, {stock_s / model:.2f}x the model): "
                    f"ours {stock_s / ours_s:.1f}x faster"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
