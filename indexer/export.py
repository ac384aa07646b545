"""Search results as pictures (a contact sheet) and as a COCO file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from usesearch.errors import UsesearchError
from usesearch.io.atomic import save_picture
from usesearch.io.images import read_image
from usesearch.tasks.visualize import decode_mask, outline, segment_tile

from .hits import Hit


def contact_sheet(
    hits: Sequence[Hit], out: str | os.PathLike, tile: int = 192, columns: int = 5
) -> tuple[Path, list[str]]:
    """The hits' segments as tiles on one picture at ``out``, each captioned with its
    rank, score and photo. A photo that can no longer be read (gone since it was
    indexed, or damaged) or whose size changed gets a grey tile, so the others still
    show: returns the picture's path and those photos."""
    rows = max(1, -(-len(hits) // columns))
    caption = 30
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    images: dict[int, np.ndarray | None] = {}
    unreadable: list[str] = []
    for i, hit in enumerate(hits):
        if hit.image_id not in images:
            try:
                read = read_image(os.fsdecode(hit.file), name=hit.image)  # the same file, as str
                if read.shape[:2] != tuple(hit.mask["size"]):  # changed since indexing: the mask is another photo's
                    raise UsesearchError(f"{hit.image} changed since it was indexed")
                images[hit.image_id] = read
            except UsesearchError:
                images[hit.image_id] = None
                unreadable.append(hit.image)
        rgb = images[hit.image_id]
        left, top = (i % columns) * tile, (i // columns) * (tile + caption)
        if rgb is None:
            draw.rectangle((left + 8, top + 8, left + tile - 8, top + tile - 8), fill=(200, 200, 200))
            draw.text((left + 16, top + tile // 2 - 6), "photo unreadable", fill=(60, 60, 60))
        else:
            tile_image = segment_tile(rgb, decode_mask(hit.mask), hit.bbox, tile)
            sheet.paste(tile_image, (left + (tile - tile_image.width) // 2, top + (tile - tile_image.height) // 2))
        draw.text((left + 4, top + tile + 2), f"#{hit.rank}  {hit.score:.3f}", fill=(0, 0, 0))
        draw.text((left + 4, top + tile + 15), Path(hit.image).name[:30], fill=(80, 80, 80))
    out = Path(out)
    save_picture(sheet, out)
    return out, unreadable


def region_picture(rgb: np.ndarray, region, show: str | os.PathLike) -> Path:
    """The photo with the searched region tinted and outlined, beside ``show``
    (``hits.png`` -> ``hits-region.png``)."""
    show = Path(show)
    out = show.with_name(f"{show.stem}-region{show.suffix or '.png'}")
    picture = rgb.astype(np.float32)
    picture[region.mask] = 0.55 * picture[region.mask] + 0.45 * np.array([255, 64, 32], np.float32)
    picture[outline(region.mask)] = (255, 255, 0)
    save_picture(Image.fromarray(picture.astype(np.uint8)), out)
    return out


def hits_to_coco(hits: Sequence[Hit], query: str) -> dict:
    """A COCO annotations file that is also a results file (each annotation has a score).
    Its images are keyed by the index's image id: two files may show the same path
    (a name with undecodable bytes, and one spelling those bytes out)."""
    images: dict[int, dict] = {}
    annotations: list[dict[str, Any]] = []
    for hit in hits:
        if hit.image_id not in images:
            h, w = hit.mask["size"]
            images[hit.image_id] = {"id": len(images) + 1, "file_name": hit.image, "height": h, "width": w}
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": images[hit.image_id]["id"],
                "category_id": 1,
                "segmentation": dict(hit.mask),
                "bbox": list(hit.bbox),
                "area": hit.area,
                "iscrowd": 0,
                "score": hit.score,
                "segment_id": hit.segment_id,
            }
        )
    return {
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [{"id": 1, "name": query, "supercategory": "query"}],
    }
