"""What ``--compile`` costs SAM's image encoder: compiled block by block
(``compile_modules``, torch's regional compilation: each kind of block compiles once)
or whole (``Module.compile``, as ``--compile`` did before), in a process of its own
with its own inductor cache (a cold compile), on random weights. Prints the eager
time of one call, the first compiled call (compiling included), a steady compiled
call, the graphs compiled and the largest difference to eager.

    python benchmarks/compile_time.py [--arch vit_h] [--how blocks|whole] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from sam_levers import timed  # noqa: E402  (a benchmark beside this one)

from usesearch.masks.sam import build_sam  # noqa: E402
from usesearch.masks.sam_compile import compile_encoder, row_major_tokens  # noqa: E402
from usesearch.masks.sam_fast import speed_up  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b")
    parser.add_argument("--how", choices=("blocks", "whole"), default="blocks")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="usesearch-inductor-"))  # cold
    from torch._dynamo.utils import counters

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = speed_up(build_sam(args.arch)).to(args.device).eval().image_encoder
    side = encoder.img_size
    pixels = torch.randn(1, 3, side, side, device=args.device)
    with torch.no_grad():
        eager_s, expected = timed(lambda: encoder(pixels), args.device, repeat=1)  # (after a warm-up call)
        if args.how == "blocks":
            compile_encoder(encoder)
        else:
            row_major_tokens(encoder)  # (as compile_encoder: else NaN under a CPU's bfloat16)
            encoder.compile()
        first_s, _ = timed(lambda: encoder(pixels), args.device, repeat=1, warm_up=False)
        steady_s, got = timed(lambda: encoder(pixels), args.device, repeat=1, warm_up=False)
    print(
        f"SAM {args.arch} encoder on {args.device}, compiled {args.how}: eager {eager_s:.2f} s, first compiled call "
        f"{first_s:.1f} s (compiling ~{first_s - steady_s:.1f} s), steady {steady_s:.2f} s; "
        f"{counters['stats']['unique_graphs']} graphs; largest difference {(got - expected).abs().max():.1e}"
    )


if __name__ == "__main__":
    main()
