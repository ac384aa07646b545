"""Pooling weights of SAM's masks: decoded to pixels (pycocotools) + dense coverage,
against coverage read straight from the RLE runs (what the indexer does).

    python benchmarks/pooling_weights.py [--masks 100] [--side 1024] [--grid 24]
"""

import argparse
import time

import numpy as np
import torch

from usesearch.masks import rle
from usesearch.models.head import letterbox_weights, padded_runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--grid", type=int, default=24, help="patch grid (24: CLIP ViT-L-14-336)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: args.side, : args.side]
    masks = np.zeros((args.masks, args.side, args.side), bool)
    for m in masks:  # solid ellipses of SAM-like sizes, a few with holes
        cy, cx = rng.integers(0, args.side, 2)
        ry, rx = rng.integers(4, args.side // 3, 2)
        np.less(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2, 1, out=m)
        if rng.random() < 0.3:
            m &= ((yy - cy) / (ry / 3)) ** 2 + ((xx - cx) / (rx / 3)) ** 2 > 1
    rles = rle.encode_stack(masks)
    hw = (args.side, args.side)
    start = time.perf_counter()
    dense = letterbox_weights(rle.decode_stack(rles, hw), args.grid)
    middle = time.perf_counter()
    runs = letterbox_weights(rle.RleStack(rles, hw), args.grid)
    end = time.perf_counter()
    print(f"{args.masks} masks of {args.side}x{args.side}, grid {args.grid}, {args.threads} threads")
    print(f"decode + dense coverage: {middle - start:.3f} s")
    print(
        f"from the RLE runs:       {end - middle:.3f} s ({(middle - start) / (end - middle):.0f}x), "
        f"max difference {float((dense - runs).abs().max()):.1e}"
    )
    start = time.perf_counter()
    padded = padded_runs(rle.RleStack(rles, hw))
    print(
        f"on a GPU, the host's share (the runs read and padded, {padded.nbytes / 1e6:.1f} MB to upload): "
        f"{time.perf_counter() - start:.3f} s"
    )


if __name__ == "__main__":
    main()
