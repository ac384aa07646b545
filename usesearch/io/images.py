"""Image inputs: anything image-like to RGB uint8, and the letterbox the encoder uses."""

from __future__ import annotations

import os
import stat
from os import PathLike
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from usesearch.errors import ImageReadError


def read_image(path: str | PathLike | BinaryIO, name: str | None = None) -> np.ndarray:
    """Open any format Pillow reads (first frame of a GIF), apply EXIF orientation so
    masks line up with what viewers show, and return RGB uint8 HxWx3. ``name`` is what
    errors call the image (for a file object, whose repr means nothing to a user)."""
    try:
        with Image.open(path) as opened:
            opened.seek(0)
            im = ImageOps.exif_transpose(opened)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit greyscale: scale to 8 bits instead of clipping at 255.
                array = np.asarray(im, dtype=np.uint32)
                shift = 8 if array.max() > 255 else 0
                im = Image.fromarray((array >> shift).astype(np.uint8))
            return to_rgb_array(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow signals truncated/corrupt files with any of these.
        raise ImageReadError(f"cannot read image {name or path}: {exc}") from exc


def displayed_size(path: str | PathLike) -> tuple[int, int]:
    """(height, width) of a photo as it is read (an EXIF quarter turn applied), from its
    header alone; a FIFO or device is refused, not waited on."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ImageReadError(f"cannot read image {os.fspath(path)}: not a regular file")
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if opened.getexif().get(0x0112) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {os.fspath(path)}: {exc}") from exc
    return height, width


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            # Composite transparency on white rather than letting it turn black.
            if image.mode in ("RGBA", "LA", "P", "PA"):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            image = image.convert("RGB")
        array = np.asarray(image, dtype=np.uint8).copy()
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"the image is empty ({image.width}x{image.height} pixels)")
        return array
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the image is empty ({array.shape[1]}x{array.shape[0]} pixels)")
    return np.ascontiguousarray(array[..., :3])


def as_masks(masks: np.ndarray | torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Bool masks [N, H, W] from bool or 0/1 arrays of any memory layout (flipped views
    included). Any other value (NaN, -1, 0.5, 255) is an error, not "inside"."""
    if not torch.is_tensor(masks):
        masks = np.ascontiguousarray(masks)  # negative strides: torch cannot view them
    masks = torch.as_tensor(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image_hw):
        raise ValueError(f"masks must be [N, {image_hw[0]}, {image_hw[1]}] like the image, got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if masks.is_complex() or not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError(f"masks must be bool or 0/1; these {masks.dtype} masks hold other values")
        masks = masks != 0
    return masks


def normalize(rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
    return (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def letterbox(
    rgb: np.ndarray, side: int, mean: tuple[float, ...], std: tuple[float, ...], canvas: int | None = None
) -> torch.Tensor:
    """Longest side scaled to ``side``, padded bottom/right with the mean colour
    (zero after normalisation) -> [3, side, side]. Padding instead of squashing
    keeps shapes undistorted, and puts grid cells at the same image positions for
    every backbone whatever its input size. ``canvas``: the image lies on a square
    of this many of its pixels (a training crop smaller than the crop size) instead
    of its own longest side."""
    h, w = rgb.shape[:2]
    scale = side / (canvas or max(h, w))
    new_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = np.array(Image.fromarray(rgb).resize(new_hw[::-1], Image.Resampling.BICUBIC))
    out = torch.zeros(3, side, side)
    out[:, : new_hw[0], : new_hw[1]] = normalize(resized, mean, std)
    return out
