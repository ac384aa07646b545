"""Pictures for people: label maps coloured by class, with a legend."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .semseg import UNLABELLED


def palette(n: int) -> np.ndarray:
    return (np.array([colorsys.hsv_to_rgb((i * 0.618) % 1, 0.75, 0.95) for i in range(n)]) * 255).astype(np.uint8)


def label_overlay(rgb: np.ndarray, labels: np.ndarray, names: Sequence[str], alpha: float = 0.55) -> Image.Image:
    colours = palette(len(names))
    out = rgb.astype(np.float32).copy()
    labelled = labels != UNLABELLED
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colours[labels[labelled]]
    present = [int(i) for i in np.unique(labels) if i != UNLABELLED]
    row = 14
    canvas = Image.new("RGB", (rgb.shape[1] + 160, max(rgb.shape[0], row * len(present) + 4)), (255, 255, 255))
    canvas.paste(Image.fromarray(out.clip(0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(present):
        y = 2 + k * row
        draw.rectangle([rgb.shape[1] + 4, y, rgb.shape[1] + 14, y + 10], fill=tuple(int(c) for c in colours[i]))
        draw.text((rgb.shape[1] + 18, y - 1), names[i][:22], fill=(0, 0, 0))
    return canvas
