"""A PNG of one curated image with each segment's mask tinted and its texts written."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from usesearch.errors import UsesearchError, first_few
from usesearch.io.atomic import save_picture
from usesearch.io.files import decode, indexed_limits, read_bytes
from usesearch.masks import rle
from usesearch.tasks import visualize

from .dataset import read_records, stale_contents


def find_record(dataset_dir: str | os.PathLike, image: str) -> dict[str, Any]:
    """The photo ``image`` names (its path, the end of its path, its file name or its
    sha256; else a file whose bytes a curated photo has, as a copy skipped in a run), with
    the segments of every source that curated it. A name that fits several photos is
    refused, naming them; one path curated again after its photo changed is the record
    training reads (``stale_contents``; no path could choose; the others by their sha256)."""
    tail = "/" + image.lstrip("./")
    found: dict[str, dict[str, Any]] = {}
    order: list[tuple[str, str]] = []  # (path, sha256) of each record matched, as curated
    for record in read_records(dataset_dir):
        path = record["path"]
        if image in (path, record["sha256"], Path(path).name) or path.endswith(tail):
            merged = found.setdefault(record["sha256"], {**record, "segments": []})
            merged["segments"] = merged["segments"] + record["segments"]
            order.append((path, record["sha256"]))
    if not found and not _is_sha256(image) and os.path.isfile(image):  # a copy of a curated photo: by its bytes
        try:
            return find_record(dataset_dir, read_bytes(image)[1])
        except UsesearchError:
            pass  # refused below by the name the user gave, not by its file's sha256
    if not found:
        raise UsesearchError(
            f"{image!r} is not in the dataset at {dataset_dir} (match by path, end of path, file name or sha256)"
        )
    if len({r["path"] for r in found.values()}) == 1:  # one path's contents over time: the one training reads
        stale = stale_contents(order)  # (the file's content now where it is one of them, else the last curated)
        return next(found[sha] for path, sha in reversed(order) if (path, sha) not in stale)
    if len(found) > 1:
        paths = sorted(r["path"] for r in found.values())
        raise UsesearchError(f"{image!r} names {len(paths)} photos: {first_few(paths)}; give more of its path")
    return next(iter(found.values()))


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


MIN_SIDE = 512  # a smaller photo is drawn at the least whole multiple of its size reaching this
TEXT_STYLE: dict[str, Any] = {"fill": (255, 255, 255), "stroke_width": 1, "stroke_fill": (0, 0, 0)}


def _free_spot(draw, text: str, at: tuple[float, float], placed: list, size: tuple[int, int], font) -> tuple:
    """Where ``text`` goes: at its box's corner, else moved down (then up) past the
    labels already written, so none is drawn over another, and kept in the picture.
    Its box is added to ``placed``."""
    left, top, right, bottom = draw.textbbox(at, text, font=font, stroke_width=TEXT_STYLE["stroke_width"])
    width, height, below = right - left, bottom - top, top - at[1]  # (a glyph's top sits below its anchor)
    x = max(0.0, min(at[0], size[0] - width))
    rows = range(1, int(size[1] // max(height, 1)) + 2)
    for y in [at[1], *(at[1] + k * (height + 1) for k in rows), *(at[1] - k * (height + 1) for k in rows)]:
        box = (x, y + below, x + width, y + below + height)
        if 0 <= box[1] and box[3] <= size[1] and not any(_overlap(box, other) for other in placed):
            break
    else:  # the picture is full of labels: where it was
        y = max(-below, min(at[1], size[1] - height - below))
        box = (x, y + below, x + width, y + below + height)
    placed.append(box)
    return x, y


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render(record: dict[str, Any], out: str | os.PathLike, alpha: float = 0.45) -> Path:
    """The photo with the record's masks drawn on it; a photo replaced since it was
    curated is refused (its masks would be drawn over other pixels, or not fit). Read
    within its own curated size: `curate run --max-pixels` let it in."""
    max_bytes, max_pixels = indexed_limits(record.get("width"), record.get("height"))
    data, sha256 = read_bytes(record["path"], max_bytes)
    if sha256 != record["sha256"]:
        raise UsesearchError(
            f"{record['path']} has changed since it was curated (its SHA-256 differs): its masks would not fit it; "
            "run `usesearch curate run` again to curate the new photo"
        )
    rgb = decode(data, record["path"], max_pixels).astype(np.float32)
    labels = []
    for i, seg in enumerate(sorted(record["segments"], key=lambda s: -s["area"])):
        mask = rle.decode(seg["rle"])
        colour = np.array(colorsys.hsv_to_rgb((i * 0.618) % 1, 0.8, 1.0)) * 255
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
        labels.append((seg["bbox"], tuple(int(c) for c in colour), "; ".join(t["text"] for t in seg["texts"])[:80]))
    canvas = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    # A small photo is drawn larger (whole pixels, as they are): at 113 px a side, its
    # labels covered it and each other.
    scale = max(1, -(-MIN_SIDE // max(canvas.size)))
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    size = max(11, max(canvas.size) // 60)  # readable on a large photo too
    font = visualize.font(size)
    placed: list[tuple[float, float, float, float]] = []
    for (x, y, w, h), outline, text in labels:
        text = visualize.drawable(text, size)  # (a caption's "café" was drawn "caf▯")
        x, y, w, h = (v * scale for v in (x, y, w, h))
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=outline, width=scale)
        draw.text(_free_spot(draw, text, (x + 2, y + 1), placed, canvas.size, font), text, font=font, **TEXT_STYLE)
    out = Path(out)
    save_picture(canvas, out)
    return out
