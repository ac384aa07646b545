"""A region of any photo, picked by a point or a box: SAM prompted once, its most
stable of three masks kept (as curation does, paper §4.1), or a mask given outright.
What ``similar --image`` searches for."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score

from usesearch.errors import BadArgumentError, UsesearchError
from usesearch.masks import rle


@dataclass(frozen=True)
class Region:
    """The region searched for: its mask (bool [H, W]) and how SAM rated it."""

    mask: np.ndarray
    bbox: tuple[int, int, int, int]  # x, y, w, h (COCO)
    area: int
    stability_score: float | None = None  # None: a mask given, not prompted
    predicted_iou: float | None = None

    @property
    def rle(self) -> dict:
        return rle.encode(self.mask)


def pick_most_stable(logits: torch.Tensor, iou_preds: torch.Tensor, mask_threshold: float, offset: float):
    """[M,H,W] logits of one prompt -> (index, stability scores [M])."""
    stability = calculate_stability_score(logits, mask_threshold, offset)
    return int(torch.argmax(stability)), stability


def parse_point(text: str) -> tuple[float, float]:
    x, y = _numbers(text, 2, "point X,Y")
    return x, y


def parse_box(text: str) -> tuple[float, float, float, float]:
    x, y, w, h = _numbers(text, 4, "box X,Y,W,H")
    if w <= 0 or h <= 0:
        raise BadArgumentError(f"box {text}: width and height must be positive")
    return x, y, w, h


def _numbers(text: str, count: int, spelling: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        raise BadArgumentError(f"{spelling}: expected {count} comma-separated numbers (pixels), got {text!r}")
    return values


def read_mask(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """A mask picture's bytes -> bool [H, W] (EXIF orientation applied, as to photos).
    Where its alpha varies, the opaque pixels are inside (a region drawn on a
    transparent layer, whatever its colour); else any non-zero colour is. ``max_pixels``:
    as for photos (None: the default)."""
    import io

    from PIL import Image, ImageOps

    from usesearch.io.files import DEFAULT_MAX_PIXELS, pil_limit_at_least, pixel_count

    # What is not a picture, or a decompression bomb: one line, nothing decoded.
    pixels = pixel_count(data, name, max_pixels or DEFAULT_MAX_PIXELS)
    try:
        with pil_limit_at_least(pixels), Image.open(io.BytesIO(data)) as opened:
            opened.seek(0)
            picture = ImageOps.exif_transpose(opened)
            if "A" in picture.getbands() or "transparency" in picture.info:
                alpha = picture.convert("RGBA").getchannel("A")
                low, high = alpha.getextrema()
                if low != high:
                    return np.asarray(np.asarray(alpha) > 0)
            return np.asarray(np.asarray(picture.convert("RGB")).any(axis=2))
    except (OSError, ValueError) as exc:
        raise UsesearchError(f"cannot read mask {name}: {exc}") from exc


def from_mask(given: np.ndarray | str | os.PathLike, hw: tuple[int, int]) -> Region:
    """The region a mask marks: an array [H, W] (any non-zero pixel inside), or a mask
    picture's path, read as the CLI's ``--mask MASK.png`` is (a path was an IndexError)."""
    if isinstance(given, (str, os.PathLike)):
        try:
            data = Path(given).read_bytes()
        except OSError as exc:
            raise UsesearchError(f"cannot read mask {os.fspath(given)}: {exc.strerror or exc}") from None
        given = read_mask(data, os.fspath(given))
    mask = np.asarray(given)
    if mask.ndim not in (2, 3) or mask.dtype == object:
        raise BadArgumentError(f"the mask is an array [H, W] or a mask picture's path; got shape {mask.shape}")
    if mask.ndim == 3:  # a PNG read with colour channels: any non-zero channel is inside
        mask = np.any(mask, axis=2)
    if mask.shape != tuple(hw):
        raise BadArgumentError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the photo is {hw[1]}x{hw[0]} (w x h)")
    mask = mask != 0
    if not mask.any():
        raise BadArgumentError("the mask is empty: mark the region with non-zero pixels")
    return _region(mask, None, None)


def _prompt_numbers(what: str, given, names: tuple[str, ...]) -> tuple[float, ...]:
    """A point or box from Python as the CLI's parsers give it: finite numbers, as many as it has."""
    try:
        values = tuple(float(v) for v in given)
    except (TypeError, ValueError):
        values = ()
    if len(values) != len(names) or isinstance(given, str) or not all(math.isfinite(v) for v in values):
        raise BadArgumentError(f"{what} is ({', '.join(names)}) in pixels, {len(names)} finite numbers; got {given!r}")
    return values


def prompt(
    sam,
    rgb: np.ndarray,
    point: Sequence[float] | None = None,
    box: Sequence[float] | None = None,
    stability_offset: float = 1.0,
) -> Region:
    """SAM's most stable mask for a point (x, y) or a box (x, y, w, h) in pixels."""
    from segment_anything import SamPredictor

    h, w = rgb.shape[:2]
    if (point is None) == (box is None):
        raise BadArgumentError("give one of point=(x, y) and box=(x, y, width, height) (or a mask)")
    point = _prompt_numbers("point", point, ("x", "y")) if point is not None else None
    box = _prompt_numbers("box", box, ("x", "y", "width", "height")) if box is not None else None
    if box is not None and (box[2] <= 0 or box[3] <= 0):  # an inverted box gave SAM a prompt and hits came back
        raise BadArgumentError(f"box {','.join(f'{v:g}' for v in box)}: its width and height must be positive")
    if point is not None and not (0 <= point[0] < w and 0 <= point[1] < h):
        raise BadArgumentError(f"point {point[0]:g},{point[1]:g} lies outside the {w}x{h} photo")
    if box is not None and (box[0] >= w or box[1] >= h or box[0] + box[2] <= 0 or box[1] + box[3] <= 0):
        raise BadArgumentError(f"box {','.join(f'{v:g}' for v in box)} lies outside the {w}x{h} photo")
    side = sam.image_encoder.img_size  # SAM resizes the photo's longest side to this
    if int(min(h, w) * side / max(h, w) + 0.5) < 1:  # (ResizeLongestSide's rounding) its short side: 0 px
        raise BadArgumentError(
            f"the photo is {w}x{h}: too narrow for SAM, whose {side}-px input leaves it no pixel across; "
            "only a mask of the region can search it (`similar --image PHOTO --mask MASK.png`; mask= in Python)"
        )
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    with torch.inference_mode():
        # In the photo's pixels: ``SamPredictor.predict`` scales prompts to SAM's input itself.
        if point is not None:
            coords = np.array([point], np.float32)
            logits, ious, _ = predictor.predict(
                point_coords=coords, point_labels=np.array([1]), multimask_output=True, return_logits=True
            )
        else:
            assert box is not None  # exactly one of point and box, checked above
            x, y, bw, bh = box
            # A box dragged past the photo's edge: the part within it (SAM took the rest
            # as coordinates in its padding, past the photo, as a point there is refused).
            xyxy = np.array([max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)], np.float32)
            logits, ious, _ = predictor.predict(box=xyxy, multimask_output=True, return_logits=True)
    logits, ious = torch.from_numpy(logits), torch.from_numpy(ious)
    best, stability = pick_most_stable(logits, ious, sam.mask_threshold, stability_offset)
    mask = (logits[best] > sam.mask_threshold).numpy()
    if not mask.any():
        raise BadArgumentError("SAM found no region there; try another point, or a box")
    return _region(mask, float(stability[best]), float(ious[best]))


def _region(mask: np.ndarray, stability: float | None, iou: float | None) -> Region:
    ys, xs = np.nonzero(mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    return Region(mask, bbox, int(mask.sum()), stability, iou)
