"""Train the tiny USE head on the synthetic world and report what it learned.

Prints held-out segment->text top-1 and semantic-segmentation mIoU (masks from the
weight-free Felzenszwalb masker, as the tiny SAM is random) for: the untrained head,
the trained head, and the training-free crop baseline; plus training throughput.

    python benchmarks/train_synthetic.py [--steps 600] [--train-images 256] [--batch 8]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import usesearch
from usesearch.io.images import read_image
from usesearch.masks.registry import build_masker
from usesearch.tasks.semseg import confusion, miou, segment_image
from usesearch.training.config import TrainConfig
from usesearch.training.data import load_samples
from usesearch.training.synthetic import semseg_classes, top1_accuracy, write_dataset, write_semseg
from usesearch.training.train import Trainer


def semseg_miou(model, root: Path) -> float:
    names = semseg_classes()
    masker = build_masker("felzenszwalb", model.preset, max_masks=24)
    matrix = np.zeros((len(names), len(names) + 1), np.int64)
    for path in sorted((root / "images").glob("*.png")):
        rgb = read_image(path)
        masks = np.stack([p.mask for p in masker(rgb)])
        gt = np.asarray(Image.open(root / "labels" / path.name)).astype(np.int64)
        matrix += confusion(segment_image(model, rgb, masks, names), gt, len(names))
    return miou(matrix)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--test-images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dir = write_dataset(tmp / "train", args.train_images, seed=1)
        test_dir = write_dataset(tmp / "test", args.test_images, seed=2)
        semseg_dir = write_semseg(tmp / "semseg", args.test_images, seed=3)
        cfg = TrainConfig(
            preset="tiny", batch_images=args.batch, crop=128, max_steps=args.steps, lr=args.lr, checkpoint_every=10**9
        )
        start = time.perf_counter()
        Trainer(load_samples([train_dir]), tmp / "run", cfg).run()
        seconds = time.perf_counter() - start
        rows = list(csv.DictReader(open(tmp / "run" / "log.csv")))
        segments = sum(int(r["segments"]) for r in rows)
        print(
            f"trained {args.steps} steps x {args.batch} images in {seconds:.0f} s: "
            f"{segments / seconds:.1f} segments/s, "
            f"{args.steps * args.batch / seconds:.1f} images/s; loss {rows[0]['loss']} -> {rows[-1]['loss']}"
        )
        print(f"chance top-1: {1 / 20:.3f}")
        for name, model in (
            ("untrained head", usesearch.load_model("tiny")),
            ("trained head", usesearch.load_model(tmp / "run" / "head")),
            ("crop baseline", usesearch.load_model("tiny", embedder="crop")),
        ):
            print(
                f"{name:>15}: held-out top-1 {top1_accuracy(model, test_dir):.3f}   "
                f"semseg mIoU {100 * semseg_miou(model, semseg_dir):.1f}%"
            )


if __name__ == "__main__":
    main()
