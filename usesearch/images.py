"""Image inputs: anything image-like to RGB uint8, and the letterbox the encoder uses."""

from __future__ import annotations

from os import PathLike
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import UsesearchError


class ImageReadError(UsesearchError):
    """A file that is not a readable image; indexers record it and go on."""


def read_image(path: str | PathLike | BinaryIO) -> np.ndarray:
    """Open any format Pillow reads (first frame of a GIF), apply EXIF orientation so
    masks line up with what viewers show, and return RGB uint8 HxWx3."""
    try:
        with Image.open(path) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit greyscale: scale to 8 bits instead of clipping at 255.
                array = np.asarray(im, dtype=np.uint32)
                shift = 8 if array.max() > 255 else 0
                im = Image.fromarray((array >> shift).astype(np.uint8))
            return to_rgb_array(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow signals truncated/corrupt files with any of these.
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            # Composite transparency on white rather than letting it turn black.
            if image.mode in ("RGBA", "LA", "P", "PA"):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8).copy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    return np.ascontiguousarray(array[..., :3])


def as_masks(masks: np.ndarray | torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    masks = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image_hw):
        raise ValueError(f"masks must be [N, {image_hw[0]}, {image_hw[1]}] like the image, got {tuple(masks.shape)}")
    return masks.bool()


def normalize(rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
    return (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def letterbox(rgb: np.ndarray, side: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Longest side scaled to ``side``, padded bottom/right with the mean colour
    (zero after normalisation) -> [3, side, side]. Padding instead of squashing
    keeps shapes undistorted, and puts grid cells at the same image positions for
    every backbone whatever its input size."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    new_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = np.array(Image.fromarray(rgb).resize(new_hw[::-1], Image.BICUBIC))
    out = torch.zeros(3, side, side)
    out[:, : new_hw[0], : new_hw[1]] = normalize(resized, mean, std)
    return out
