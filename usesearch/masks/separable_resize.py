"""``Sam.postprocess_masks``'s two bilinear resizes (low-res logits to the model's canvas,
cut to the photo's part, then to the photo's size) as one separable linear map, for
photos larger than the canvas, whose logits are resized twice.

Each resize is linear and separable (rows, then columns), so their composition is too:
a photo's row ``i`` reads at most three low-res rows with fixed weights, and a column
likewise. ``axis_taps`` takes those weights from ``F.interpolate`` itself (the two
resizes of an identity matrix, multiplied), so clamping at the edges and PyTorch's
float32 source coordinates are the library's, not written again here. Upscaling
through the taps costs a photo's pixels times three multiply-adds, where the fused
two-step form recomputed both resizes' coordinates and sixteen reads at every pixel
(~6x on a CPU at 12 MP). The values differ from the two-step ones by float rounding
alone (the same products, summed in another order)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

MAX_TAPS = 4  # low-res rows (columns) one photo row (column) can read: 3 when the photo is upscaled


@lru_cache(maxsize=64)  # a photo shape's two axes: a run's photos share a few shapes (on a GPU: no copy a call)
def axis_taps(side: int, low: int, input_len: int, out_len: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(indices [out_len, K] into the ``low`` low-res rows, float32 weights [out_len, K])
    of the composite resize along one axis: ``low`` -> ``side`` (the canvas), its first
    ``input_len`` kept, -> ``out_len``. Taps past the last row repeat it with weight 0."""
    indices, weights = _axis_taps(side, low, input_len, out_len)
    return indices.to(device), weights.to(device)


def _axis_taps(side: int, low: int, input_len: int, out_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    first = _resize_matrix(low, side)[:input_len]  # [input_len, low]
    second = _resize_matrix(input_len, out_len)  # [out_len, input_len]
    composite = second.double() @ first.double()  # exact products of the float32 weights, summed in float64
    nonzero = composite != 0
    taps = int(nonzero.sum(1).max())
    if taps > MAX_TAPS:  # (only a photo smaller than the canvas, not taken here, reads more)
        raise ValueError(f"a resize of {low} -> {side}[:{input_len}] -> {out_len} reads {taps} rows a row")
    start = nonzero.float().argmax(1)  # each row's taps are contiguous: the first nonzero
    indices = (start[:, None] + torch.arange(taps)[None]).clamp(max=low - 1)
    weights = torch.gather(composite, 1, indices)
    weights[:, 1:][indices[:, 1:] == indices[:, :-1]] = 0.0  # a tap clamped onto the last row, counted once
    return indices, weights.float()


def _resize_matrix(size: int, out_size: int) -> torch.Tensor:
    """[out_size, size]: bilinear resizing (``align_corners=False``) of ``size`` rows to
    ``out_size``, in float32, as ``F.interpolate`` weights them."""
    eye = torch.eye(size, dtype=torch.float32)[None, None]
    return F.interpolate(eye, size=(out_size, size), mode="bilinear", align_corners=False)[0, 0]


def separable_upscale(low_res: torch.Tensor, rows: tuple[torch.Tensor, ...], cols: tuple[torch.Tensor, ...]):
    """[N, 1, h, w] low-res logits -> [N, H, W] at the photo's size through ``axis_taps``'
    rows and columns. Rows first, written out ([N, H, w]: a quarter of the canvas's
    width per photo row); under ``torch.compile`` the columns fuse into what reads them."""
    low = low_res[:, 0]
    (row_index, row_weight), (col_index, col_weight) = rows, cols
    by_rows = low[:, row_index[:, 0]] * row_weight[:, 0, None]
    for k in range(1, row_index.shape[1]):
        by_rows = by_rows + low[:, row_index[:, k]] * row_weight[:, k, None]
    logits = by_rows[:, :, col_index[:, 0]] * col_weight[:, 0]
    for k in range(1, col_index.shape[1]):
        logits = logits + by_rows[:, :, col_index[:, k]] * col_weight[:, k]
    return logits
