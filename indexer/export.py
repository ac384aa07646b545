"""Search results as pictures (a contact sheet) and as a COCO file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from usesearch.errors import UsesearchError
from usesearch.io.atomic import save_picture
from usesearch.io.files import decode, indexed_limits, read_bytes, stat_signature
from usesearch.tasks.visualize import decode_mask, font, label, outline, segment_tile

from .hits import Hit

TILE, CAPTION, COLUMNS = 192, 30, 5
WEBP_MOST_PIXELS = 16_383  # a side WebP can hold


def sheet_size(hits: int, tile: int = TILE, columns: int = COLUMNS) -> tuple[int, int]:
    """A contact sheet's (width, height) for this many hits (fewer than a row: as wide as they are)."""
    columns = min(columns, max(1, hits))
    return columns * tile, max(1, -(-hits // columns)) * (tile + CAPTION)


def check_sheet(out: str | os.PathLike, hits: int, asked: bool = False) -> None:
    """Refuse a sheet its format cannot hold (before drawing it; the COCO file is written
    first). ``asked``: ``hits`` is the -k a search was given, checked before it runs
    (refused after it, a search of seconds and a gigabyte was thrown away)."""
    height = sheet_size(hits)[1]
    if Path(out).suffix.lower() == ".webp" and height > WEBP_MOST_PIXELS:
        most = WEBP_MOST_PIXELS // (TILE + CAPTION) * COLUMNS
        if asked:
            raise UsesearchError(
                f"--show {out}: a WebP sheet holds {most} hits at most, and this search may find {hits}: "
                f"write a .png, or give -k {most} or fewer"
            )
        raise UsesearchError(f"--show {out}: a WebP sheet holds {most} hits at most, not {hits}: write a .png")


def contact_sheet(
    hits: Sequence[Hit],
    out: str | os.PathLike,
    tile: int = TILE,
    columns: int = COLUMNS,
    sha256_of: Callable[[int], str | None] | None = None,
    notes: Sequence[str] | None = None,
) -> tuple[Path, dict[str, str]]:
    """The hits' segments as tiles on one picture at ``out``, each captioned with its
    rank, score and photo (``notes``: a word on each before its photo, an audit's
    classes). A photo that is no longer the one indexed (gone, damaged, not a regular
    file, or another picture: its size, or its content where ``sha256_of(image_id)``
    gives the indexed one) gets a grey tile, so the others still show: returns the
    picture's path and those photos, each with why ("gone", "changed" or "unreadable",
    as its tile says). Each photo is read once and let go once its tiles are drawn (a
    sheet of 12 MP photos held them all)."""
    check_sheet(out, len(hits))
    columns = min(columns, max(1, len(hits)))  # 2 hits were 2 tiles and 3 blank ones
    sheet = Image.new("RGB", sheet_size(len(hits), tile, columns), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    places: dict[int, list[int]] = {}
    for i, hit in enumerate(hits):
        places.setdefault(hit.image_id, []).append(i)
    unreadable: dict[str, str] = {}
    for image_id, at in places.items():
        rgb, why = _indexed_photo(hits[at[0]], sha256_of)
        if rgb is None:
            unreadable[hits[at[0]].image] = why
        for i in at:
            hit = hits[i]
            left, top = (i % columns) * tile, (i // columns) * (tile + CAPTION)
            if rgb is None:
                draw.rectangle((left + 8, top + 8, left + tile - 8, top + tile - 8), fill=(200, 200, 200))
                # A word a line, in a font its size (the bitmap default's space read as "photogone").
                draw.multiline_text(
                    (left + 16, top + tile // 2 - 18), f"photo\n{why}", fill=(60, 60, 60), font=font(16)
                )
            else:
                tile_image = segment_tile(rgb, decode_mask(hit.mask), hit.bbox, tile)
                sheet.paste(tile_image, (left + (tile - tile_image.width) // 2, top + (tile - tile_image.height) // 2))
            label(draw, (left + 4, top + tile + 2), f"#{hit.rank}  {hit.score:.3f}", (0, 0, 0))
            name = Path(hit.image).name if notes is None else f"{notes[i]}  {Path(hit.image).name}"
            label(draw, (left + 4, top + tile + 15), name, (80, 80, 80), width=tile - 8)
        del rgb
    out = Path(out)
    save_picture(sheet, out)
    return out, unreadable


def _indexed_photo(hit: Hit, sha256_of: Callable[[int], str | None] | None) -> tuple[np.ndarray | None, str]:
    """The hit's photo as it was indexed, else None and why: "gone", "changed" (another
    content, or size) or "unreadable". Read as the indexer reads (a FIFO swapped in
    under its name is refused, never waited on)."""
    try:
        data, sha256, max_pixels = _read_as_indexed(hit)
        if sha256_of is not None and sha256_of(hit.image_id) not in (None, sha256):
            return None, "changed"  # replaced: its stored masks would be drawn on another picture
        rgb = decode(data, hit.image, max_pixels)
    except (UsesearchError, OSError):
        return None, "unreadable" if os.path.lexists(hit.file) else "gone"
    return (rgb, "") if rgb.shape[:2] == tuple(hit.mask["size"]) else (None, "changed")


def region_picture_path(show: str | os.PathLike) -> Path:
    """Where ``similar --image --show`` draws the searched region: beside the sheet."""
    show = Path(show)
    return show.with_name(f"{show.stem}-region{show.suffix or '.png'}")


def region_picture(rgb: np.ndarray, region, show: str | os.PathLike) -> Path:
    """The photo with the searched region tinted and outlined, beside ``show``
    (``hits.png`` -> ``hits-region.png``)."""
    out = region_picture_path(show)
    picture = rgb.astype(np.float32)
    picture[region.mask] = 0.55 * picture[region.mask] + 0.45 * np.array([255, 64, 32], np.float32)
    picture[outline(region.mask)] = (255, 255, 0)
    save_picture(Image.fromarray(picture.astype(np.uint8)), out)
    return out


def stale_photos(
    hits: Sequence[Hit],
    file_stat_of: Callable[[int], str | None],
    sha256_of: Callable[[int], str | None] | None = None,
    until: float | None = None,
) -> tuple[list[str], list[str], int]:
    """The hits' photos (each once) gone since indexing, and those whose stat is not the
    one recorded when last read whole (``file_stat_of``: the record's; None, unknown, is
    taken as unchanged): what a COCO export would give masks that no longer fit. By
    stat, not by reading them (an export of 1,000 hits over as many photos); with
    ``sha256_of`` (the indexed content's), a photo whose stat changed is read and called
    changed only where its content did (touched or copied back: the masks still fit, and
    ``--show`` draws it). ``until`` (a ``time.monotonic`` deadline): the photos past it
    are not checked (a listing's 10,000 hits on network storage); the count checked
    comes third."""
    gone: list[str] = []
    changed: list[str] = []
    photos = {hit.image_id: hit for hit in hits}
    for checked, (image_id, hit) in enumerate(photos.items()):
        if until is not None and checked and time.monotonic() > until:
            return gone, changed, checked
        try:
            now = stat_signature(os.stat(hit.file))
        except OSError:
            gone.append(hit.image)
            continue
        recorded = file_stat_of(image_id)
        if recorded is not None and now != recorded and not _same_content(hit, sha256_of):
            changed.append(hit.image)
    return gone, changed, len(photos)


def _same_content(hit: Hit, sha256_of: Callable[[int], str | None] | None) -> bool:
    indexed = sha256_of(hit.image_id) if sha256_of is not None else None
    if indexed is None:
        return False
    try:
        return _read_as_indexed(hit)[1] == indexed
    except (UsesearchError, OSError):
        return False


def _read_as_indexed(hit: Hit) -> tuple[bytes, str, int]:
    """The hit's photo's bytes and SHA-256, read within the limits it was indexed under
    (one indexed past the defaults too), and the pixels its decoding may take."""
    height, width = hit.mask["size"]
    max_bytes, max_pixels = indexed_limits(width, height)
    data, sha256 = read_bytes(hit.file, max_bytes, hit.image)
    return data, sha256, max_pixels


def hits_to_coco(hits: Sequence[Hit], query: str) -> dict:
    """A COCO annotations file that is also a results file (each annotation has a score).
    Its images are keyed by the index's image id: two files may show the same path
    (a name with undecodable bytes, and one spelling those bytes out)."""
    images: dict[int, dict] = {}
    annotations: list[dict[str, Any]] = []
    for hit in hits:
        if hit.image_id not in images:
            h, w = hit.mask["size"]
            # The index's id: the same photo has the same id in every export (and in --json)
            images[hit.image_id] = {"id": hit.image_id, "file_name": hit.image, "height": h, "width": w}
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": images[hit.image_id]["id"],
                "category_id": 1,
                "segmentation": dict(hit.mask),
                "bbox": list(hit.bbox),
                "area": hit.area,
                "iscrowd": int(bool(hit.iscrowd)),  # a labelled dataset's flag kept (a proposal's: 0)
                "score": hit.score,
                "segment_id": hit.segment_id,
                # Where the segment came from, so an export of annotations keeps what they were.
                "source": hit.source,
                **({"annotation_id": hit.annotation_id} if hit.annotation_id is not None else {}),
                **({"label": hit.category} if hit.category is not None else {}),
                **({"split": hit.split} if hit.split is not None else {}),
            }
        )
    return {
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [{"id": 1, "name": query, "supercategory": "query"}],
    }
