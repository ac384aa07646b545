"""Pictures for people: label maps coloured by class with a legend, and segment tiles."""

from __future__ import annotations

import colorsys
import unicodedata
from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries

from usesearch.masks import rle as rle_codec


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where the system has it (most Linux systems: accented, Greek and
    Cyrillic names drawn as they are), else Pillow's own, whose glyphs are ASCII only."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def drawable(text: str, size: int) -> str:
    """``text`` as ``font(size)`` draws it, on one line: with Pillow's own font, accents
    dropped and other letters past ASCII as "?" (it drew each as the same empty box:
    "rocket ü" read "rocket ▯"); with a system font, each letter it has no glyph for as
    "?" (DejaVu has none for CJK, Devanagari or emoji). Control characters and line or
    paragraph separators, which a file name may hold, as "?" too (U+2029 failed Pillow's layout)."""
    text = "".join("?" if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    chosen = font(size)
    if isinstance(chosen, ImageFont.FreeTypeFont) and chosen.getname()[0] != "Aileron":
        return "".join("?" if _no_glyph(c, size) else c for c in text)
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(c if c.isascii() else "?" for c in folded)


@cache
def _no_glyph(char: str, size: int) -> bool:
    """Whether ``font(size)`` draws ``char`` as it draws a code point no font has: its
    empty box, the same for every letter it lacks. Laid out one code point at a time
    (Pillow's basic layout): raqm's shaping draws a lone combining mark on a dotted
    circle, so a vowel sign the font lacks never looked like the box alone."""

    def drawn(c: str) -> tuple:
        mask = _one_at_a_time(size).getmask(c)
        return mask.size, bytes(mask)

    return not char.isascii() and drawn(char) == drawn("\U0010fffd")


@cache
def _one_at_a_time(size: int) -> ImageFont.FreeTypeFont:
    """``font(size)`` (a system font) with Pillow's basic layout."""
    return ImageFont.truetype(font(size).path, size, layout_engine=ImageFont.Layout.BASIC)  # type: ignore[union-attr]


def label(draw: ImageDraw.ImageDraw, at: tuple[int, int], text: str, fill, size: int = 11, width: int = 0) -> None:
    """A line of a person's text (a file or class name) on a picture, cut to ``width``
    pixels where given (a tile's caption ran into the next tile's)."""
    text, chosen, mark = drawable(text, size), font(size), drawable("…", size)  # ("..." in Pillow's font)
    if width and chosen.getlength(text) > width:
        while len(text) > 1 and chosen.getlength(text + mark) > width:
            text = text[:-1]
        text += mark
    draw.text(at, text, fill=fill, font=chosen)


def palette(n: int) -> np.ndarray:
    return (np.array([colorsys.hsv_to_rgb((i * 0.618) % 1, 0.75, 0.95) for i in range(n)]) * 255).astype(np.uint8)


def label_overlay(rgb: np.ndarray, labels: np.ndarray, names: Sequence[str], alpha: float = 0.55) -> Image.Image:
    colours = palette(len(names))
    out = rgb.astype(np.float32).copy()
    labelled = labels < len(names)  # the unlabelled value (255 or 65535) is past every class
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colours[labels[labelled]]
    present = [int(i) for i in np.unique(labels[labelled])]
    row, legend = 14, 160
    canvas = Image.new("RGB", (rgb.shape[1] + legend, max(rgb.shape[0], row * len(present) + 4)), (255, 255, 255))
    canvas.paste(Image.fromarray(out.clip(0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(present):
        y = 2 + k * row
        draw.rectangle([rgb.shape[1] + 4, y, rgb.shape[1] + 14, y + 10], fill=tuple(int(c) for c in colours[i]))
        label(draw, (rgb.shape[1] + 18, y - 1), names[i], (0, 0, 0), width=legend - 20)  # a long name: cut, with "…"
    return canvas


def decode_mask(rle: dict) -> np.ndarray:
    return rle_codec.decode(rle)


TINT = (255, 40, 40)
OUTLINE = (255, 255, 0)


def outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    return find_boundaries(mask, mode="inner", connectivity=1)


def segment_tile(
    rgb: np.ndarray, mask: np.ndarray, bbox: Sequence[int], tile: int, margin: float = 0.25
) -> Image.Image:
    """A square crop around the segment: mask tinted, its outline drawn, context kept."""
    x, y, w, h = bbox
    side = int(max(w, h) * (1 + 2 * margin)) + 2
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(rgb.shape[1], x0 + side)), int(min(rgb.shape[0], y0 + side))
    crop = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    scale = tile / max(crop.size)  # small segments are enlarged too
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    # Tint and outline at display size, so the outline stays crisp and one width at any scale.
    pixels = np.asarray(crop.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    m = np.asarray(Image.fromarray(mask[y0:y1, x0:x1]).resize(size, Image.Resampling.NEAREST))
    pixels[m] = 0.6 * pixels[m] + 0.4 * np.array(TINT)
    pixels[outline(m)] = OUTLINE
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
