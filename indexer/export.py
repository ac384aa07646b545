"""Search results as pictures (a contact sheet) and as a COCO file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from usesearch.images import read_image

from .search import Hit


def decode_mask(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def segment_tile(rgb: np.ndarray, mask: np.ndarray, bbox: Sequence[int], tile: int, margin: float = 0.25) -> Image.Image:
    """A square crop around the segment: mask tinted, its outline drawn, context kept."""
    x, y, w, h = bbox
    side = int(max(w, h) * (1 + 2 * margin)) + 2
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(rgb.shape[1], x0 + side)), int(min(rgb.shape[0], y0 + side))
    crop = rgb[y0:y1, x0:x1].astype(np.float32)
    m = mask[y0:y1, x0:x1]
    crop[m] = 0.6 * crop[m] + 0.4 * np.array([255, 40, 40])
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    crop[m & ~inner] = (255, 255, 0)  # outline
    image = Image.fromarray(crop.clip(0, 255).astype(np.uint8))
    scale = tile / max(image.size)  # small segments are enlarged too
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def contact_sheet(hits: Sequence[Hit], out: str | os.PathLike, tile: int = 192, columns: int = 5) -> Path:
    rows = max(1, -(-len(hits) // columns))
    caption = 30
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    images: dict[str, np.ndarray] = {}
    for i, hit in enumerate(hits):
        rgb = images.setdefault(hit.image, read_image(hit.image))
        tile_image = segment_tile(rgb, decode_mask(hit.mask), hit.bbox, tile)
        left, top = (i % columns) * tile, (i // columns) * (tile + caption)
        sheet.paste(tile_image, (left + (tile - tile_image.width) // 2, top + (tile - tile_image.height) // 2))
        draw.text((left + 4, top + tile + 2), f"#{hit.rank}  {hit.score:.3f}", fill=(0, 0, 0))
        draw.text((left + 4, top + tile + 15), Path(hit.image).name[:30], fill=(80, 80, 80))
    out = Path(out)
    sheet.save(out)
    return out


def hits_to_coco(hits: Sequence[Hit], query: str) -> dict:
    """A COCO annotations file that is also a results file (each annotation has a score)."""
    images: dict[str, dict] = {}
    annotations = []
    for hit in hits:
        if hit.image not in images:
            h, w = hit.mask["size"]
            images[hit.image] = {"id": len(images) + 1, "file_name": hit.image, "height": h, "width": w}
        annotations.append({
            "id": len(annotations) + 1, "image_id": images[hit.image]["id"], "category_id": 1,
            "segmentation": dict(hit.mask), "bbox": list(hit.bbox), "area": hit.area, "iscrowd": 0,
            "score": hit.score, "segment_id": hit.segment_id,
        })
    return {"images": list(images.values()), "annotations": annotations,
            "categories": [{"id": 1, "name": query, "supercategory": "query"}]}
