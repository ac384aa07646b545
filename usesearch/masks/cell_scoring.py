"""Candidates' stability scores and boxes by cells: the upscaled logits of every pixel
are read only where a threshold passes through.

Upscaling is linear with non-negative weights that sum to one (bilinear, once or
twice: ``separable_resize``), so a photo pixel's logit lies between the least and the
greatest of the few low-res logits it reads. The photo's rows that read the same
low-res rows, by the same columns' counterpart, tile it into cells (4x4 pixels at the
model's canvas), each reading one small block of low-res logits. A cell whose block
lies wholly above a threshold (by a margin that covers float rounding) has every
pixel above it, and one wholly below has none: their counts and box edges follow
from the cell's size and place alone. Only the cells a threshold crosses are
upscaled, pixel by pixel (at the canvas as inductor decomposes ``F.interpolate``,
past it as ``separable_upscale``). That arithmetic and ATen's kernel round about half
the pixels of an edge an ulp or two apart, so at the canvas a candidate with a
crossed pixel within ``NEAR`` of a level is doubted, and the caller scores it by the
dense pass: the library's numbers bit for bit. Past the canvas, within float
rounding, as the compiled pass. A mask's interior and the background are most of its
pixels, so most of the work goes; where crossed cells are many (noise),
``cell_scores`` returns None and the caller takes its dense pass.

Written by hand: no library counts thresholded pixels of an upscaled image without
upscaling it. Tested against segment-anything's helpers over materialised logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from usesearch.masks.separable_resize import axis_taps

# Of a value's magnitude, what float rounding in the upscaling can move it: a few
# multiply-adds of float32 (2^-24 each) over operands at most the block's largest
# logit. 2^-14 leaves a thousandfold room: a cell inside it is upscaled pixel by pixel.
ROUNDING = 2.0**-14
TINY = 1e-30  # the margins' floor: subnormal logits round by an absolute amount, not a relative one
# How far from a level a crossed pixel's value, as cells compute it, may lie and still
# fall on the other side in F.interpolate's kernel (one resize: each is within ~3 ulps
# of the exact value, of the block's largest logit; 2^-20 is 8 ulps). At the canvas a
# candidate with such a pixel (~1 in 10 on a CPU) is scored by the dense pass instead,
# so cells give the library's numbers bit for bit there.
NEAR = 2.0**-20
# Past this share of the pixels in crossed cells, their gathers cost more than the
# dense pass (measured on a CPU: ``benchmarks/candidate_scores.py``).
CROSSED_SHARE = 0.25


@dataclass(frozen=True)
class AxisCells:
    """One axis of the photo cut into runs of pixels that read the same low-res rows
    (columns): each run's first pixel, length and first low-res row read, and every
    pixel's taps (low-res indices and weights, ``separable_resize.axis_taps``). A run
    is upscaled in pieces of ``piece`` pixels (the usual run: 4 at the canvas, whose
    first run, the clamped edge's, is 6)."""

    first: torch.Tensor  # [G] long
    length: torch.Tensor  # [G] long
    start: torch.Tensor  # [G] long
    index: torch.Tensor  # [out, K] long
    weight: torch.Tensor  # [out, K] float32
    piece: int
    cut: torch.Tensor  # [G] long: the pieces each run is cut into
    odd: torch.Tensor  # [G'] long: the runs whose length is not ``piece``
    starts: tuple[int, ...]  # ``start`` on the host (no read-back from a GPU a call)

    @property
    def taps(self) -> int:
        return self.index.shape[1]


@lru_cache(maxsize=64)  # a photo shape's two axes; a run's photos share a few shapes
def axis_cells(side: int, low: int, input_len: int, out_len: int, device: torch.device) -> AxisCells:
    """``AxisCells`` of the composite resize ``low`` -> ``side`` [:input_len] -> ``out_len``:
    runs of pixels whose taps start at the same low-res row, each start one run."""
    index, weight = axis_taps(side, low, input_len, out_len, torch.device("cpu"))
    start, length = torch.unique_consecutive(index[:, 0], return_counts=True)  # each run's first row read, pixels
    first = torch.cumsum(length, 0) - length
    if len(torch.unique(start)) != len(start):  # (taps start at rows that only grow)
        raise ValueError(f"a resize of {low} -> {side}[:{input_len}] -> {out_len} reads rows out of order")
    interior = length[1:-1] if len(length) > 2 else length  # (the edges' runs are clamped: shorter or longer)
    piece = int(interior.max())
    return AxisCells(
        first=first.to(device),
        length=length.to(device),
        start=start.to(device),
        index=index.to(device),
        weight=weight.to(device),
        piece=piece,
        cut=(-(-length // piece)).to(device),
        odd=(length != piece).nonzero()[:, 0].to(device),
        starts=tuple(start.tolist()),
    )


def cell_scores(
    low_res: torch.Tensor,
    rows: AxisCells,
    cols: AxisCells,
    threshold: float,
    offset: float,
    lerp: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(stability scores [N], boxes XYXY [N, 4], doubtful [N] bool) of [N, 1, h, w] low-res
    logits upscaled by ``rows`` and ``cols``, as ``calculate_stability_score`` and
    ``batched_mask_to_box`` give them over the upscaled logits, except the doubtful
    candidates' (a crossed pixel within ``NEAR`` of a level: the caller scores them by
    the dense pass); None where crossed cells are too many.
    ``lerp``: one resize (the photo at the canvas's size): pixels computed as inductor's
    ``F.interpolate``, and candidates doubted; else as ``separable_upscale``, within
    float rounding of the two resizes (as the compiled pass there), none doubted."""
    low = low_res[:, 0]
    lowest, highest = _block_bounds(low, rows, cols)  # [N, Gr, Gc]
    levels = (threshold - offset, threshold, threshold + offset)  # union, box, intersection
    smallest, largest = torch.aminmax(low)
    size = float(torch.maximum(-smallest, largest))
    if not math.isfinite(size):  # (NaN or infinite logits: the dense pass says what stock says)
        return None
    # Per level, the cells wholly above it (a least logit past it, by the margin) and
    # those it crosses (not wholly above, a greatest logit that reaches it).
    margins = [ROUNDING * (size + abs(level)) + TINY for level in levels]
    wholly = [lowest > level + margin for level, margin in zip(levels, margins)]
    crossed = [(highest >= level - margin) & ~above for level, margin, above in zip(levels, margins, wholly)]
    where = (crossed[0] | crossed[1] | crossed[2]).nonzero()  # [M, 3]: candidate, row run, column run
    pixels = len(low) * len(rows.index) * len(cols.index)
    upscaled = int((rows.cut[where[:, 1]] * cols.cut[where[:, 2]]).sum()) * rows.piece * cols.piece
    if upscaled > CROSSED_SHARE * pixels:
        return None
    near_pixels = torch.zeros(len(low), dtype=torch.int32, device=low.device)  # (sums, not a mask: no read-back)
    counts = [_pixels_of(above, rows, cols) for above in wholly]
    boxes = _full_extents(wholly[1], rows, cols)
    if len(where):
        n, r, c = where.unbind(1)
        mine = [cells[n, r, c] for cells in crossed]  # which levels cross each crossed cell
        pieces = upscaled // (rows.piece * cols.piece)
        n, r, c, row_at, col_at, valid, mine = _pieces(n, r, c, rows, cols, torch.stack(mine, 1), pieces)
        values, magnitude = _upscaled(low, n, r, c, row_at, col_at, rows, cols, lerp)
        if valid is not None:  # pixels past a short run: below every level
            values.masked_fill_(~valid, float("-inf"))
        for i, level in enumerate(levels):
            over = values > level
            if lerp:
                near = (values - level).abs() <= (NEAR * (magnitude + abs(level)) + TINY)[:, None, None]
                near_pixels = near_pixels.index_add(0, n, (near.flatten(1).any(1) & mine[:, i]).to(torch.int32))
            counts[i] = counts[i].index_add(0, n, _count(over) * mine[:, i])
            if i == 1:  # the box's level
                _add_extents(boxes, over, mine[:, i], n, row_at, col_at)
    union, _, intersection = (count.to(torch.int32) for count in counts)
    left, top, right, bottom = boxes
    filled = bottom >= 0
    xyxy = torch.stack([left, top, right, bottom], dim=-1) * filled[:, None]  # an empty mask: zeros, as stock's
    return intersection / union, xyxy, near_pixels > 0  # int32 / int32, as segment-anything divides


def _count(over: torch.Tensor) -> torch.Tensor:
    """True pixels of each piece ([P, R, C] bool -> [P] long): NumPy's count_nonzero on a
    CPU (torch converts bools to integers first: ~3x the time), else torch's sum."""
    if over.device.type == "cpu":
        return torch.from_numpy(np.count_nonzero(over.numpy().reshape(len(over), -1), axis=1).astype(np.int64))
    return over.sum((1, 2))


def _pixels_of(cells: torch.Tensor, rows: AxisCells, cols: AxisCells) -> torch.Tensor:
    """Pixels in the cells marked ([N, Gr, Gc] bool), per candidate: each cell's rows
    times its columns, the usual run length once and the odd runs' difference apart."""
    per_row = cells.view(torch.uint8).sum(-1, dtype=torch.int32) * cols.piece  # [N, Gr] (a byte sum: ~2x a bool's)
    if len(cols.odd):
        per_row += (cells[:, :, cols.odd] * (cols.length[cols.odd] - cols.piece)).sum(-1, dtype=torch.int32)
    return (per_row * rows.length).sum(-1)  # (not a matmul: CUDA has none for integers)


def _block_bounds(low: torch.Tensor, rows: AxisCells, cols: AxisCells) -> tuple[torch.Tensor, torch.Tensor]:
    """Least and greatest low-res logit each cell's pixels read: [N, Gr, Gc] each."""
    lowest, highest = _window_bounds(low, low, rows, 1)
    return _window_bounds(lowest, highest, cols, 2)


def _window_bounds(lowest: torch.Tensor, highest: torch.Tensor, axis: AxisCells, dim: int):
    """Along ``dim``: the least of ``lowest`` and the greatest of ``highest`` over each
    run's taps (``axis.taps`` rows from its start; a window past the last row reads the
    last ``taps`` rows, a superset of its own), written in place: no copy of the inputs."""
    size, taps = lowest.shape[dim], min(axis.taps, lowest.shape[dim])
    starts = [min(start, size - taps) for start in axis.starts]
    first = starts[0]
    windows = len(starts) - _tail(starts)  # the windows at consecutive starts; then the clamped ones repeat
    if starts[:windows] != list(range(first, first + windows)):  # (a photo smaller than the canvas)
        return tuple(
            _window_bounds_at(values, pick, torch.tensor(starts, device=values.device), taps, dim)
            for values, pick in ((lowest, torch.minimum), (highest, torch.maximum))
        )
    out = []
    for values, pick in ((lowest, torch.minimum), (highest, torch.maximum)):
        shape = list(values.shape)
        shape[dim] = len(starts)
        bound = torch.empty(shape, dtype=values.dtype, device=values.device)
        head = bound.narrow(dim, 0, windows)
        if taps == 1:
            head.copy_(values.narrow(dim, first, windows))
        else:
            pick(values.narrow(dim, first, windows), values.narrow(dim, first + 1, windows), out=head)
            for k in range(2, taps):
                pick(head, values.narrow(dim, first + k, windows), out=head)
        for j in range(windows, len(starts)):
            bound.narrow(dim, j, 1).copy_(bound.narrow(dim, starts[j] - first, 1))
        out.append(bound)
    return out[0], out[1]


def _tail(starts: list[int]) -> int:
    """How many windows at the end repeat the one before (starts clamped at the edge)."""
    tail = 0
    while tail < len(starts) - 1 and starts[-1 - tail] == starts[-2 - tail]:
        tail += 1
    return tail


def _window_bounds_at(values: torch.Tensor, pick, starts: torch.Tensor, taps: int, dim: int) -> torch.Tensor:
    """``_window_bounds``' one bound for any starts, by gathering (a photo smaller than the
    canvas, whose runs may skip low-res rows)."""
    bound = values.index_select(dim, starts)
    for k in range(1, taps):
        bound = pick(bound, values.index_select(dim, starts + k))
    return bound


def _full_extents(full: torch.Tensor, rows: AxisCells, cols: AxisCells) -> list[torch.Tensor]:
    """[left, top, right, bottom] of the pixels in cells wholly above the threshold, per
    candidate ([N] each; a photo's size, or -1 for the right and bottom, where none)."""
    in_row, in_col = full.any(2), full.any(1)  # [N, Gr], [N, Gc]
    (left, right), (top, bottom) = _span(in_col, cols), _span(in_row, rows)
    return [left, top, right, bottom]


def _span(marked: torch.Tensor, axis: AxisCells) -> tuple[torch.Tensor, torch.Tensor]:
    """(first pixel, last pixel) of the runs marked along an axis ([N, G] bool): the
    axis's length and -1 where none is."""
    size = len(axis.index)
    if not marked.shape[1]:
        none = torch.zeros(len(marked), dtype=torch.long, device=marked.device)
        return none + size, none - 1
    first = torch.where(marked, axis.first, size).amin(1)
    last = torch.where(marked, axis.first + axis.length - 1, -1).amax(1)
    return first, last


def _pieces(n, r, c, rows: AxisCells, cols: AxisCells, mine: torch.Tensor, pieces: int):
    """The crossed cells cut into ``pieces`` pieces (known on the host: no read-back) of
    at most ``piece`` x ``piece`` pixels: each piece's candidate, runs, photo rows [P, R]
    and columns [P, C], which of them lie in its run ([P, R, C] bool; None where every
    run has the usual length) and its levels ([P, 3])."""
    device = n.device
    across = cols.cut[c]
    many = rows.cut[r] * across
    if pieces > len(n):  # (some cell is cut)
        cell = torch.repeat_interleave(torch.arange(len(n), device=device), many, output_size=pieces)
        starts = torch.repeat_interleave(torch.cumsum(many, 0) - many, many, output_size=pieces)
        within = torch.arange(pieces, device=device) - starts
        down, right = within // across[cell], within % across[cell]
        n, r, c, mine = n[cell], r[cell], c[cell], mine[cell]
    else:
        down = right = torch.zeros_like(n)
    row_at = rows.first[r, None] + down[:, None] * rows.piece + torch.arange(rows.piece, device=device)
    col_at = cols.first[c, None] + right[:, None] * cols.piece + torch.arange(cols.piece, device=device)
    valid = None
    if len(rows.odd) or len(cols.odd):
        valid = (row_at < (rows.first + rows.length)[r, None])[:, :, None] & (
            col_at < (cols.first + cols.length)[c, None]
        )[:, None, :]
    row_at, col_at = row_at.clamp(max=len(rows.index) - 1), col_at.clamp(max=len(cols.index) - 1)
    return n, r, c, row_at, col_at, valid, mine


def _upscaled(low, n, r, c, row_at, col_at, rows: AxisCells, cols: AxisCells, lerp: bool):
    """The pieces' pixels upscaled ([P, R, C]) from their run's block of low-res logits,
    and each block's largest magnitude ([P]: what rounding in the upscaling scales with)."""
    h, w = low.shape[-2:]
    device = low.device
    row_reads = (rows.start[r, None] + torch.arange(rows.taps, device=device)).clamp(max=h - 1)  # [P, K]
    col_reads = (cols.start[c, None] + torch.arange(cols.taps, device=device)).clamp(max=w - 1)
    flat = (n[:, None, None] * h + row_reads[:, :, None]) * w + col_reads[:, None, :]
    block = torch.take(low, flat)  # [P, K, Kc] (take: half the time of indexing by three tensors)
    magnitude = block.abs().flatten(1).amax(1)
    row_weight, col_weight = rows.weight[row_at], cols.weight[col_at]  # [P, R, K], [P, C, Kc]
    if lerp:  # inductor's decomposition of bilinear resizing: columns first, then rows, as lerps
        col_step, row_step = col_weight[:, None, :, 1], row_weight[:, :, None, 1]
        top = block[:, 0, 0, None, None] + (block[:, 0, 1] - block[:, 0, 0])[:, None, None] * col_step
        bottom = block[:, 1, 0, None, None] + (block[:, 1, 1] - block[:, 1, 0])[:, None, None] * col_step
        return top + (bottom - top) * row_step, magnitude
    # separable_upscale: rows first, tap by tap, then columns
    by_rows = block[:, None, 0, :] * row_weight[:, :, 0, None]  # [P, R, Kc]
    for k in range(1, rows.taps):
        by_rows = by_rows + block[:, None, k, :] * row_weight[:, :, k, None]
    values = by_rows[:, :, None, 0] * col_weight[:, None, :, 0]
    for k in range(1, cols.taps):
        values = values + by_rows[:, :, None, k] * col_weight[:, None, :, k]
    return values, magnitude


def _add_extents(boxes: list[torch.Tensor], over: torch.Tensor, mine: torch.Tensor, n, row_at, col_at) -> None:
    """Widen [left, top, right, bottom] by the pieces' pixels above the threshold: a
    piece's rows and columns are consecutive, so its first and last marked ones are
    where the marks start and end."""
    in_row, in_col = over.any(2), over.any(1)  # [P, R], [P, C]
    some = in_row.any(1) & mine  # (a piece the level does not cross: its cell's pixels are counted whole)
    edges = (
        col_at.gather(1, in_col.byte().argmax(1, keepdim=True))[:, 0],
        row_at.gather(1, in_row.byte().argmax(1, keepdim=True))[:, 0],
        col_at.gather(1, in_col.shape[1] - 1 - in_col.flip(1).byte().argmax(1, keepdim=True))[:, 0],
        row_at.gather(1, in_row.shape[1] - 1 - in_row.flip(1).byte().argmax(1, keepdim=True))[:, 0],
    )
    none = (torch.iinfo(torch.long).max, torch.iinfo(torch.long).max, -1, -1)  # (each reduction's identity)
    for i, (edge, how) in enumerate(zip(edges, ("amin", "amin", "amax", "amax"))):
        # the pieces without a marked pixel given the identity, not masked out (no read-back)
        boxes[i] = boxes[i].scatter_reduce(0, n, torch.where(some, edge, none[i]), how)
