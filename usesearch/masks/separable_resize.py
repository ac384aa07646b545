"""``Sam.postprocess_masks``'s two bilinear resizes (low-res logits to the model's canvas,
cut to the photo's part, then to the photo's size) as one separable linear map, for
photos larger than the canvas, whose logits are resized twice.

Each resize is linear and separable (rows, then columns), so their composition is too:
a photo's row ``i`` reads at most three low-res rows with fixed weights, and a column
likewise. ``axis_taps`` takes those weights from ``F.interpolate`` itself (the first
resize of an identity matrix; the second probed with four columns, ``_resize_taps``),
so clamping at the edges and PyTorch's float32 source coordinates are the library's,
not written again here. Upscaling
through the taps costs a photo's pixels times three multiply-adds, where the fused
two-step form recomputed both resizes' coordinates and sixteen reads at every pixel
(~6x on a CPU at 12 MP). The values differ from the two-step ones by float rounding
alone (the same products, summed in another order)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
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
    first = _resize_matrix(low, side)[:input_len].double()  # [input_len, low]
    row, weight, after, weight_after = _resize_taps(input_len, out_len)
    # The composite, exact products of the float32 weights summed in float64: two terms a
    # row (a second weight of 0 adds nothing), whose one rounding is a dense product's.
    composite = weight[:, None].double() * first[row] + weight_after[:, None].double() * first[after]
    nonzero = composite != 0
    taps = int(nonzero.sum(1).max())
    if taps > MAX_TAPS:  # (only a photo smaller than the canvas, not taken here, reads more)
        raise ValueError(f"a resize of {low} -> {side}[:{input_len}] -> {out_len} reads {taps} rows a row")
    start = nonzero.float().argmax(1)  # each row's taps are contiguous: the first nonzero
    indices = (start[:, None] + torch.arange(taps)[None]).clamp(max=low - 1)
    weights = torch.gather(composite, 1, indices)
    weights[:, 1:][indices[:, 1:] == indices[:, :-1]] = 0.0  # a tap clamped onto the last row, counted once
    return indices, weights.float()


def _resize_taps(size: int, out_size: int) -> tuple[torch.Tensor, ...]:
    """The bilinear resize of ``size`` rows to ``out_size`` (``_resize_matrix``'s) as two
    taps a row: (first row read, its weight, the next row (clamped), its weight; 0 where
    the row reads one). Probed from ``F.interpolate`` with four columns where the matrix
    resized an identity of ``size`` columns (~0.1-0.2 s a new photo shape on 2 cores):
    three one-hot columns of the rows' residues mod 3 take each tap's float32 weight as
    the identity's column did (1 x weight + 0 x the other's; a row clamped onto the last
    reads one residue, weighted as that column was), and a column of row numbers finds
    the first row read to within rounding, far under 1/2."""
    rows = torch.arange(size)
    probe = torch.zeros(size, 4, dtype=torch.float32)
    probe[rows, rows % 3] = 1.0
    probe[:, 3] = rows.float()  # (exact: a side is far under 2**24)
    read = F.interpolate(probe[None, None], size=(out_size, 4), mode="bilinear", align_corners=False)[0, 0]
    by_residue, position = read[:, :3], read[:, 3].double()
    on = by_residue != 0
    # Two taps read residues r and r + 1 (mod 3): the first is the one whose predecessor is off.
    two = on.sum(1) == 2
    first_residue = torch.where(two, (on & ~on.roll(1, dims=1)).float().argmax(1), on.float().argmax(1))
    weight = by_residue.gather(1, first_residue[:, None])[:, 0]
    weight_after = torch.where(two, by_residue.gather(1, ((first_residue + 1) % 3)[:, None])[:, 0], 0.0)
    row = torch.round(position - weight_after.double()).long()
    if not (torch.equal(row % 3, first_residue) and bool((on.sum(1) >= 1).all())):
        raise ValueError(f"a resize of {size} -> {out_size} read rows the probe cannot place")
    return row, weight, (row + 1).clamp(max=size - 1), weight_after


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


def aten_linear_weights(side: int, low: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low-res indices [length, 2] long, weights (1 - lambda, lambda) [length, 2] float32)
    of the first ``length`` pixels of one bilinear resize ``low`` -> ``side``
    (``align_corners=False``), as ATen's CPU kernel computes them in float32: source
    coordinate, clamped at 0, less its floor; the second index clamped at the last row."""
    scale = np.float32(low) / np.float32(side)
    source = np.maximum(scale * (np.arange(length, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    first = np.minimum(np.floor(source), low - 1)
    lam = np.clip(source - first, 0, 1).astype(np.float32)
    index = torch.from_numpy(first.astype(np.int64))
    return torch.stack([index, index + (index < low - 1)], 1), torch.from_numpy(np.stack([1 - lam, lam], 1))


def fused_lerp(a0: torch.Tensor, w0: torch.Tensor, a1: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """``fma(a0, w0, a1 * w1)`` of float32 values held in float64: the exact product plus the
    rounded addend, summed in float64, rounded to float32; the fma's own result wherever
    that sum is exact in float64 (``cell_scoring._as_aten`` says where)."""
    return (a0 * w0 + (a1 * w1).float().double()).float().double()


@lru_cache(maxsize=8)
def kernel_fuses(device: torch.device) -> bool:
    """Whether ``F.interpolate``'s bilinear kernel on ``device`` rounds as ``fused_lerp``
    along each low-res row, then across the two rows (a CPU's: builds for AVX2 and
    AVX-512 contract its ``t0 * w0 + t1 * w1`` into an fma), over random logits upscaled
    4x, sliced as ``amg_utils.upscale_to_input`` slices them (rows of 92: a vector loop's
    remainder too). Not covered: ``torch.set_flush_denormal(True)``, under which ATen
    flushes subnormal logits the emulation keeps (no caller sets it)."""
    low = torch.randn(4, 24, 24, generator=torch.Generator().manual_seed(0)) * 10
    low[0, 5] = 0.0
    sliced = low[:, :23, :23]
    upscaled = F.interpolate(sliced[:, None].to(device), scale_factor=4.0, mode="bilinear", align_corners=False)
    index, weight = aten_linear_weights(92, 23, 92)
    x, w = sliced.double(), weight.double()
    across = [fused_lerp(x[:, i][:, :, index[:, 0]], w[:, 0], x[:, i][:, :, index[:, 1]], w[:, 1]) for i in index.T]
    values = fused_lerp(across[0], w[:, 0, None], across[1], w[:, 1, None]).float()
    return torch.equal(values, upscaled[:, 0].cpu())
