"""What the models take: a photo letterboxed into a normalised square tensor, and
masks as a bool tensor. Apart from ``usesearch.io.images`` so that reading a photo
(and every command line, which imports the readers) does not import torch."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from usesearch.errors import BadArgumentError


def as_masks(masks: np.ndarray | torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Bool masks [N, H, W] from bool or 0/1 arrays of any memory layout (flipped views
    included). Any other value (NaN, -1, 0.5, 255) is an error, not "inside"."""
    if not torch.is_tensor(masks):
        if masks is None or isinstance(masks, (str, bytes, os.PathLike)):  # (torch's TypeError of a NumPy object)
            raise BadArgumentError(f"masks is an array of [N, H, W] masks, bool or 0/1; got {type(masks).__name__}")
        masks = np.ascontiguousarray(masks)  # negative strides: torch cannot view them
        if masks.dtype == object:
            raise BadArgumentError("masks is an array of [N, H, W] masks, bool or 0/1; got an array of objects")
    masks = torch.as_tensor(masks)
    if masks.ndim == 1 and masks.numel() == 0:  # ``[]``: no masks, as a (0, H, W) stack is
        masks = torch.zeros((0, *image_hw), dtype=torch.bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image_hw):
        raise BadArgumentError(
            f"masks must be [N, {image_hw[0]}, {image_hw[1]}] like the image, got {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        if masks.is_complex() or not bool(((masks == 0) | (masks == 1)).all()):
            raise BadArgumentError(f"masks must be bool or 0/1; these {masks.dtype} masks hold other values")
        masks = masks != 0
    return masks


def normalize(rgb: np.ndarray | torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W], normalised, on the input's device."""
    tensor = (torch.from_numpy(rgb) if isinstance(rgb, np.ndarray) else rgb).permute(2, 0, 1).float().div_(255)
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), tensor.device)
    return (tensor - mean_t) / std_t


@lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    """[3, 1, 1] mean and std on ``device``, made once: each made anew was a copy to a card
    a photo and backbone, and a copy from pageable memory waits for the stream."""
    return torch.tensor(mean, device=device)[:, None, None], torch.tensor(std, device=device)[:, None, None]


def letterbox(
    rgb: np.ndarray, side: int, mean: tuple[float, ...], std: tuple[float, ...], canvas: int | None = None
) -> torch.Tensor:
    """Longest side scaled to ``side``, padded bottom/right with the mean colour
    (zero after normalisation) -> [3, side, side]. Padding instead of squashing
    keeps shapes undistorted, and puts grid cells at the same image positions for
    every backbone whatever its input size. ``canvas``: the image lies on a square
    of this many of its pixels (a training crop smaller than the crop size) instead
    of its own longest side."""
    return padded(torch.from_numpy(resized(rgb, side, canvas)), side, mean, std)


def resized(rgb: np.ndarray, side: int, canvas: int | None = None) -> np.ndarray:
    """``letterbox``'s first half: the photo scaled (bicubic, as PIL does it), still uint8."""
    h, w = rgb.shape[:2]
    scale = side / (canvas or max(h, w))
    new_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    return np.array(Image.fromarray(rgb).resize(new_hw[::-1], Image.Resampling.BICUBIC))


def padded(pixels: torch.Tensor, side: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``letterbox``'s second half, on the pixels' device: uint8 [h, w, 3] normalised
    onto a zero (mean-colour) square [3, side, side]. On a GPU the photo goes up as
    uint8, a quarter of float32's bytes, and the arithmetic runs there."""
    out = torch.zeros(3, side, side, device=pixels.device)
    out[:, : pixels.shape[0], : pixels.shape[1]] = normalize(pixels, mean, std)
    return out
