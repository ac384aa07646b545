"""Drawing the synthetic world of shapes: a smooth noisy background and a filled
circle, square or triangle mask. Shared by training's world with known answers and
the audit's world with planted errors, so both draw the same shapes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(60, 160, (4, 4, 3))
    smooth = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC), np.float32
    )
    return np.clip(smooth + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)


def shape_mask(kind: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """[size, size] bool: a circle, a square, or (any other kind) a triangle in ``box``."""
    canvas = Image.new("1", (size, size))
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=1)
    elif kind == "square":
        draw.rectangle(box, fill=1)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=1)
    return np.asarray(canvas, bool)
