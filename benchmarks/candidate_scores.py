"""SAM's candidate scoring (each candidate's stability score and box from its upscaled
logits): segment-anything's helpers over materialised logits against the compiled
one-pass form (``CompiledScores``, the generator's default on CUDA) and scoring by
cells (``cell_scoring``, where nothing is compiled).

For each photo shape: the compile time, ms per photo of each path at a 32x32 grid's
3,072 candidates (thresholds off, as the throughput benchmark runs), whether the
numbers agree, and the buffers the compiled code allocates (none may be [N, H, W]:
that would be the full-size logits written after all; a photo larger than the canvas,
scored through the composite resize's taps, writes [N, H, 256]). The eager path is run in
groups that fit (a 12 MP photo's 3,072 candidates are 147 GB of float32 logits).

    python benchmarks/candidate_scores.py [--device cuda] [--candidates 3072] [--photos 768x1024,3000x4000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers' reader of generated code
from tests.helpers import allocated_sizes  # noqa: E402
from usesearch.masks.amg_utils import CompiledScores, eager_stability_and_boxes  # noqa: E402
from usesearch.masks.candidate_scoring import CandidateScoring  # noqa: E402

SIDE = 1024
EAGER_BYTES = 8 * 2**30  # full-size float32 logits the eager path holds at a time


def blob_logits(count: int, device: torch.device) -> torch.Tensor:
    """SAM-like low-res logits: smooth random blobs, different for every candidate."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(count, 1, 8, 8, generator=generator)
    return (8 * F.interpolate(coarse, (256, 256), mode="bicubic", align_corners=False) - 8).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def eager(low_res, input_size, crop_hw):
    group = max(1, EAGER_BYTES // (4 * max(crop_hw[0] * crop_hw[1], SIDE * SIDE)))
    parts = [
        eager_stability_and_boxes(low_res[i : i + group], SIDE, input_size, crop_hw, 0.0, 1.0)
        for i in range(0, len(low_res), group)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def cells(low_res, input_size, crop_hw):
    """Scoring by cells (``cell_scoring``) as the generator's scoring runs it where nothing
    is compiled, a group of photo pixels at a time; None where it gave way."""
    return CandidateScoring(SIDE, 0.0, 1.0, low_res.device, compiled=False).by_cells(low_res, input_size, crop_hw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--candidates", type=int, default=None, help="default: 3072 on a GPU, 192 on a CPU")
    parser.add_argument("--photos", default="768x1024,3000x4000", help="photo sizes, HxW")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    count = args.candidates or (3072 if device.type == "cuda" else 192)
    from torch._inductor.utils import fresh_cache, run_and_get_code

    print(f"candidate scoring on {device}, {count} candidates a photo, torch {torch.__version__}")
    scores = CompiledScores(SIDE, 0.0, 1.0)
    low_res = blob_logits(count, device)
    faults = []
    for text in args.photos.split(","):
        crop_hw = tuple(int(v) for v in text.split("x"))
        input_size = ResizeLongestSide.get_preprocess_shape(crop_hw[0], crop_hw[1], SIDE)
        start = time.perf_counter()
        with fresh_cache():  # a cold compile, its own code (a warm cache hands back another run's)
            (stability, boxes), sources = run_and_get_code(scores, low_res, input_size, crop_hw)
            sync(device)
        compile_s = time.perf_counter() - start
        shapes = [shape for source in sources for shape in allocated_sizes(source)]
        # [N, H, W] would be the full-size logits; a photo larger than the canvas writes
        # its rows resized first, [N, H, 256] (a low-res row per photo row), and no more.
        full_size = [s for s in shapes if len(s) > 2 and s[-1] != low_res.shape[-1]]
        if full_size or scores.failed or not shapes:
            faults.append(f"{text}: " + (scores.failed or f"{len(full_size)} full-size buffers of {len(shapes)}"))
        compiled_s, _ = timed(lambda: scores(low_res, input_size, crop_hw), device, args.repeat)
        eager_s, (eager_stability, eager_boxes) = timed(lambda: eager(low_res, input_size, crop_hw), device, 1)
        cells_s, by_cells = timed(lambda: cells(low_res, input_size, crop_hw), device, args.repeat)
        stability_gap = (stability.nan_to_num(-1) - eager_stability.nan_to_num(-1)).abs().max().item()
        boxes_differ = int((boxes != eager_boxes).any(1).sum())
        print(
            f"  {crop_hw[0]}x{crop_hw[1]} (canvas {input_size[0]}x{input_size[1]}): eager {1000 * eager_s:8.1f} ms, "
            f"compiled {1000 * compiled_s:7.1f} ms ({eager_s / compiled_s:.1f}x), compiling {compile_s:.1f} s, "
            f"cells {1000 * cells_s:7.1f} ms ({eager_s / cells_s:.1f}x)"
            + (f", fallback: {scores.failed}" if scores.failed else "")
        )
        if by_cells is None:
            faults.append(f"{text}: cell scoring gave way to the dense pass")
        else:
            cells_gap = (by_cells[0].nan_to_num(-1) - eager_stability.nan_to_num(-1)).abs().max().item()
            cells_differ = int((by_cells[1] != eager_boxes).any(1).sum())
            print(f"    cells against eager: {cells_differ} boxes differ, largest stability gap {cells_gap:.2e}")
            if tuple(input_size) == tuple(crop_hw) and (cells_differ or cells_gap):  # at the canvas: the same bits
                faults.append(f"{text}: cells differ from this device's kernel at the canvas (NEAR too thin here?)")
        print(
            f"    agreement: {boxes_differ} of {count} boxes differ, largest stability gap {stability_gap:.2e}; "
            f"buffers the compiled code allocates: {len(shapes)}, full-size ([N, H, W]): {len(full_size)}"
        )
    if faults:  # a check (gpu_check.sh) must fail, not just print
        sys.exit(
            "compiled scoring fell back or wrote the full-size logits, or cells were not exact: " + "; ".join(faults)
        )


if __name__ == "__main__":
    main()
