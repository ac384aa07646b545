"""What each indexing stage must cost on a GPU: FLOPs and bytes per photo, and the
floor they set on an H200 (or any card: --tflops, --tbps).

FLOPs are counted by PyTorch's FlopCounterMode on the real architectures (SAM on the
meta device: no memory, no time; CLIP + DINOv2 run once on the CPU with random
weights). Bytes are the weights read once (bfloat16) plus every activation each op
writes and the next reads (2x its size, bfloat16; the mask stages' float32 logits and
bool masks at their own sizes). The floor of a stage is the larger of FLOPs/peak
and bytes/bandwidth; the pipeline's is their sum (stages do not overlap on one card).

    python benchmarks/stage_floor.py [--preset l14-336] [--points-per-side 32] [--masks 100]
        [--width 1024 --height 768] [--tflops 790] [--tbps 4.8]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from usesearch.masks.sam import build_sam
from usesearch.masks.sam_fast import speed_up
from usesearch.models import presets


class WrittenBytes(TorchDispatchMode):
    """Bytes every op's outputs take, at ``itemsize`` per element for floating point
    (bfloat16: 2) and their own size for the rest (bool masks, counts)."""

    def __init__(self, itemsize: int | None = 2):
        super().__init__()
        self.itemsize, self.total = itemsize, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and func not in (
                torch.ops.aten.view.default,
                torch.ops.aten._unsafe_view.default,
                torch.ops.aten.expand.default,
                torch.ops.aten.permute.default,
                torch.ops.aten.t.default,
                torch.ops.aten.transpose.int,
                torch.ops.aten.slice.Tensor,
                torch.ops.aten.select.int,
                torch.ops.aten.unsqueeze.default,
                torch.ops.aten.detach.default,
            ):
                size = self.itemsize if (t.is_floating_point() and self.itemsize) else t.element_size()
                self.total += t.numel() * size
        return out


def measure(fn, itemsize: int | None = 2) -> tuple[float, float]:
    """(FLOPs, activation bytes moved: written, then read once)."""
    with FlopCounterMode(display=False) as flops, WrittenBytes(itemsize) as written, torch.no_grad():
        fn()
    return float(flops.get_total_flops()), 2.0 * written.total


def weight_bytes(module: torch.nn.Module) -> float:
    return 2.0 * sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="l14-336")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--masks", type=int, default=100, help="masks kept per photo")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument(
        "--tflops", type=float, default=790.0, help="dense bfloat16 rate reached in practice (H200: ~790)"
    )
    parser.add_argument("--tbps", type=float, default=4.8, help="memory bandwidth, TB/s (H200: 4.8)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = presets.PRESETS[args.preset]
    points, h, w = args.points_per_side**2, args.height, args.width
    rows = []

    with torch.device("meta"):
        sam = speed_up(build_sam(preset.sam.model_type))  # as load_sam hands it out
    side = sam.image_encoder.img_size
    pixels = torch.empty(1, 3, side, side, device="meta")
    flops, moved = measure(lambda: sam.image_encoder(pixels))
    rows.append((f"SAM {preset.sam.model_type} encoder", flops, moved + weight_bytes(sam.image_encoder)))

    width = sam.mask_decoder.transformer_dim  # 256 (the tiny preset's SAM: 32)
    grid = side // 16
    feats = torch.empty(1, width, grid, grid, device="meta")
    sparse = torch.empty(points, 2, width, device="meta")
    dense = torch.empty(1, width, grid, grid, device="meta").expand(points, -1, -1, -1)  # no mask prompts

    def decode():
        return sam.mask_decoder(
            image_embeddings=feats,
            image_pe=feats,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )

    flops, moved = measure(decode)
    rows.append((f"SAM decoder, {points} prompts", flops, moved + weight_bytes(sam.mask_decoder)))

    low_res = torch.empty(3 * points, 1, 256, 256, device="meta")

    # Upscaling to the canvas and the photo, stability (two thresholds), boxes' masks: float32 as the generator.
    def post():
        logits = F.interpolate(low_res, (side, side), mode="bilinear", align_corners=False)[..., :h, :w]
        if (h, w) != (side, side)[:2] and max(h, w) != side:
            logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
        for threshold in (1.0, -1.0, 0.0):
            (logits > threshold).sum((-1, -2))

    flops, unfused = measure(post, itemsize=None)
    # Compiled (``CompiledScores``, the default on CUDA): the upscaling is fused into the
    # per-row reductions, so the low-res logits are read and per-row counts written
    # (two int32 counts, two int64 columns a row); the kept masks are then upscaled once.
    fused = 3 * points * (256 * 256 * 4 + h * 24) + args.masks * h * w * 5
    rows.append((f"mask upscaling + scores, {3 * points} masks (compiled)", flops, fused))
    asides = [(f"  (the same eager, the logits written: {unfused / 1e9:.1f} GB)", unfused)]

    masks_bytes = args.masks * h * w  # bool masks of the kept ones, read for their runs
    rows.append((f"RLE of {args.masks} masks (runs on the GPU)", 2.0 * args.masks * h * w, 3.0 * masks_bytes))

    from usesearch.models.factory import create_use_and_clip

    random = replace(
        preset,
        clip=replace(preset.clip, pretrained=None),
        dino=replace(preset.dino, pretrained=False),
        head=replace(preset.head, seeded_random=True),
    )
    use, _ = create_use_and_clip(random)
    use.eval()
    clip_px = torch.randn(1, 3, preset.clip.image_size, preset.clip.image_size)
    dino_px = torch.randn(1, 3, preset.dino.image_size, preset.dino.image_size)
    flops, moved = measure(lambda: use.encoder(clip_px, dino_px))
    rows.append(
        (
            f"backbones (CLIP {preset.clip.image_size}px + DINOv2 {preset.dino.image_size}px + LLNs)",
            flops,
            moved + weight_bytes(use.encoder),
        )
    )
    with torch.no_grad():
        z = use.encoder(clip_px, dino_px)
    weights = torch.rand(args.masks, preset.grid * preset.grid)
    flops, moved = measure(lambda: use.head(z, weights))
    rows.append((f"pooling + projection, {args.masks} masks", flops, moved + weight_bytes(use.head)))

    peak, bandwidth = args.tflops * 1e12, args.tbps * 1e12
    print(
        f"preset {args.preset}: {w}x{h} photo, {points} prompts, {args.masks} masks kept; "
        f"peak {args.tflops:g} TFLOP/s bf16, {args.tbps:g} TB/s"
    )
    print(f"{'stage':<58} {'GFLOP':>9} {'MB':>9} {'floor ms':>9}  bound")
    total = 0.0
    for name, flops, moved in rows:
        compute, memory = flops / peak, moved / bandwidth
        total += max(compute, memory)
        print(
            f"{name:<58} {flops / 1e9:9.1f} {moved / 1e6:9.1f} {1000 * max(compute, memory):9.2f}  "
            f"{'compute' if compute >= memory else 'memory'}"
        )
    print(f"{'floor per photo':<58} {'':>9} {'':>9} {1000 * total:9.2f}  ({1 / total:.0f} photos/s at best)")
    for name, moved in asides:
        print(f"{name}: {1000 * moved / bandwidth:.2f} ms")


if __name__ == "__main__":
    main()
