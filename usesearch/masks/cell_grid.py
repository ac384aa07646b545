"""The cells that scoring by cells (``cell_scoring``) reads, one axis at a time: the
photo's pixels cut into runs that read the same low-res rows (columns) of the logits,
each run into cells, with every pixel's taps and, for one resize, ATen's own weights
(with which ``cell_scoring`` computes a pixel about a level again). The resize's
shapes alone decide them, not the logits: they are made once per shape and cached,
apart from the scoring of each photo's logits."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from usesearch.masks.separable_resize import aten_linear_weights, axis_taps


@dataclass(frozen=True)
class AxisCells:
    """One axis of the photo cut into runs of pixels that read the same low-res rows
    (columns), each run cut into cells of at most ``piece`` pixels (the usual run: 4 at
    the canvas, whose first run, the clamped edge's, is 6: cells of 4 and 2): each
    cell's first pixel, length and first low-res row read, and every pixel's taps
    (low-res indices and weights, ``separable_resize.axis_taps``). Per cell, for its
    upscaling: the low-res rows it reads, its ``piece`` pixels and their weights (past
    the cell: the axis's length, and NaN weights, a value above no level)."""

    first: torch.Tensor  # [G] long
    length: torch.Tensor  # [G] long
    start: torch.Tensor  # [G] long
    index: torch.Tensor  # [out, K] long
    weight: torch.Tensor  # [out, K] float32
    piece: int
    odd: torch.Tensor  # [G'] long: the cells whose length is not ``piece``
    starts: tuple[int, ...]  # ``start`` on the host (no read-back from a GPU a call)
    reads: torch.Tensor  # [K, G] long
    weights: torch.Tensor  # [K, piece, G] float32
    # One resize: ATen's kernel's own weights (1 - lambda, lambda) [G, piece, 2] float64,
    # and the bits after the binary point they take; None where ATen's arithmetic, as
    # written here, does not give the taps' weights.
    aten: torch.Tensor | None
    aten_bits: int

    @property
    def taps(self) -> int:
        return self.index.shape[1]


@lru_cache(maxsize=64)  # a photo shape's two axes; a run's photos share a few shapes
def axis_cells(side: int, low: int, input_len: int, out_len: int, device: torch.device) -> AxisCells:
    """``AxisCells`` of the composite resize ``low`` -> ``side`` [:input_len] -> ``out_len``:
    runs of pixels whose taps start at the same low-res row, each start one run."""
    index, weight = axis_taps(side, low, input_len, out_len, torch.device("cpu"))
    if index.shape[1] == 1:  # (one or two pixels read one row each: a second tap of weight 0, as ATen's)
        index, weight = torch.cat([index, (index + 1).clamp(max=low - 1)], 1), torch.cat([weight, 0 * weight], 1)
    start, length = torch.unique_consecutive(index[:, 0], return_counts=True)  # each run's first row read, pixels
    if len(torch.unique(start)) != len(start):  # (taps start at rows that only grow)
        raise ValueError(f"a resize of {low} -> {side}[:{input_len}] -> {out_len} reads rows out of order")
    interior = length[1:-1] if len(length) > 2 else length  # (the edges' runs are clamped: shorter or longer)
    piece = int(interior.max())
    cut = -(-length // piece)  # each run's cells
    run = torch.repeat_interleave(torch.arange(len(cut)), cut)
    within = torch.arange(len(run)) - (torch.cumsum(cut, 0) - cut)[run]
    first = (torch.cumsum(length, 0) - length)[run] + within * piece
    length, start = torch.clamp(length[run] - within * piece, max=piece), start[run]
    pixels = first[:, None] + torch.arange(piece)
    pixels = pixels.masked_fill(pixels >= (first + length)[:, None], out_len)
    nan = torch.full((1, weight.shape[1]), float("nan"))
    aten, bits = _aten_weights(side, low, index, weight) if input_len == out_len else (None, 0)
    on = lambda tensor: tensor.to(device)  # noqa: E731
    return AxisCells(
        first=on(first),
        length=on(length),
        start=on(start),
        index=on(index),
        weight=on(weight),
        piece=piece,
        odd=on((length != piece).nonzero()[:, 0]),
        starts=tuple(start.tolist()),
        reads=on((start + torch.arange(index.shape[1])[:, None]).clamp(max=low - 1)),
        weights=on(torch.cat([weight, nan]).T[:, pixels.T].contiguous()),
        aten=None if aten is None else on(aten[pixels]),
        aten_bits=bits,
    )


def _aten_weights(side: int, low: int, index: torch.Tensor, weight: torch.Tensor):
    """(ATen's weights [out + 1, 2] float64, NaN past the last pixel; their bits after the
    binary point) of one resize, or (None, 0) where they are not the taps' (``F.interpolate``'s
    own; summed where a pixel's two rows are one, at the clamped edge)."""
    if index.shape[1] != 2:
        return None, 0
    aten_index, aten = aten_linear_weights(side, low, len(index))
    merged = torch.where(aten_index[:, :1] == aten_index[:, 1:], torch.stack([aten.sum(1), 0 * aten[:, 1]], 1), aten)
    if not (torch.equal(aten_index[:, 0], index[:, 0]) and torch.equal(merged, weight)):
        return None, 0
    bits = next((k for k in range(25) if torch.equal(torch.round(aten * 2**k), aten * 2**k)), 99)
    return torch.cat([aten.double(), torch.full((1, 2), float("nan"), dtype=torch.float64)]), bits
