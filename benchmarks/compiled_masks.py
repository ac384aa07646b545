"""The generator's masks with its decoder compiled (``CompiledDecoder``, the default on
a GPU) under bfloat16 autocast, against segment-anything's float32 masks: whether
they stay within the README's bf16 tolerance (``tests.helpers.BF16_*``), beside the
uncompiled decoder's. Inductor's bf16 kernels round otherwise than eager ones, so
the tolerance is checked, not assumed. On the tests' blob SAM, two photos, the
test suite's two settings; exits 1 when a compiled run falls outside.

On a CPU inductor builds C++ (~40 s a setting on two cores); on a GPU, Triton.

    python benchmarks/compiled_masks.py [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers: the blob SAM, the tolerance
from tests.helpers import BF16_COUNT, BF16_MATCHED, LOW, bf16_agreement, blob_sam  # noqa: E402
from usesearch.masks.amg import SamMaskGenerator  # noqa: E402

SETTINGS = {
    "plain": dict(points_per_side=8, **LOW),
    "crops-small-regions": dict(points_per_side=6, crop_n_layers=1, min_mask_region_area=25, **LOW),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sam = blob_sam(args.device)
    print(
        f"blob SAM on {args.device}, bf16 autocast; "
        f"tolerance: {BF16_MATCHED:.0%} matched, counts within {BF16_COUNT:.0%}"
    )
    outside = []
    for setting, options in SETTINGS.items():
        for photo in ("coffee", "astronaut"):
            image = np.ascontiguousarray(getattr(data, photo)()[::3, ::3])
            stock = SamAutomaticMaskGenerator(sam, **options).generate(image)
            eager = SamMaskGenerator(sam, autocast=True, compiled_decoder=False, **options).generate(image)
            start = time.perf_counter()
            generator = SamMaskGenerator(sam, autocast=True, compiled_decoder=True, **options)
            compiled = generator.generate(image)
            seconds = time.perf_counter() - start
            (e_matched, e_gap), (c_matched, c_gap) = bf16_agreement(stock, eager), bf16_agreement(stock, compiled)
            failed = " (FAILED to compile: eager)" if generator.decoder.failed else ""
            print(
                f"  {setting:<20} {photo:<10} stock {len(stock):4d} masks; matched at IoU >= 0.95: "
                f"eager {e_matched:6.1%} (counts {e_gap:.1%}), compiled {c_matched:6.1%} (counts {c_gap:.1%}); "
                f"first call {seconds:.1f} s{failed}",
                flush=True,
            )
            if c_matched < BF16_MATCHED or c_gap > BF16_COUNT or generator.decoder.failed:
                outside.append(f"{setting}/{photo}")
    print("every compiled run within the tolerance" if not outside else f"outside the tolerance: {', '.join(outside)}")
    sys.exit(1 if outside else 0)


if __name__ == "__main__":
    main()
