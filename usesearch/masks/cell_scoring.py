"""Candidates' stability scores and boxes by cells: the upscaled logits of every pixel
are read only where a threshold passes through.

Upscaling is linear with non-negative weights that sum to one (bilinear, once or
twice: ``separable_resize``), so a photo pixel's logit lies between the least and
the greatest of the few low-res logits it reads. The photo's rows that read the same
low-res rows, by the same columns' counterpart, tile it into cells (4x4 pixels at
the model's canvas: ``cell_grid``), each reading one small block of low-res logits.
A cell whose block lies wholly above a threshold (by a margin that covers float
rounding) has every pixel above it, and one wholly below has none: their counts and
box edges follow from the cell's size and place alone. Each low-res logit is marked
once against the levels (a bit a level, above and below), and a cell's marks are its
block's bits ANDed. Only the cells a threshold crosses are upscaled, pixel by pixel,
once for each level that crosses them (at the canvas as inductor decomposes
``F.interpolate``, past it as ``separable_upscale``). At the canvas a pixel within
``NEAR`` of a level may fall on either side in ATen's kernel: it is computed again
as that kernel rounds (``_as_aten``), so cells give the library's numbers bit for
bit. Where that cannot be proven (a kernel that rounds otherwise, such as a GPU's,
or a block of logits spanning ~2^21 in magnitude) the candidate is doubted, and the
caller scores it by the dense pass. Past the canvas, within float rounding, as the
compiled pass. A mask's interior and the background are most of its pixels, so most
of the work goes; where crossed cells are many (noise), ``cell_scores`` returns None
and the caller takes its dense pass.

Written by hand: no library counts thresholded pixels of an upscaled image without
upscaling it. Tested against segment-anything's helpers over materialised logits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from usesearch.masks.cell_grid import AxisCells
from usesearch.masks.separable_resize import fused_lerp, kernel_fuses

# Of a value's magnitude, what float rounding in the upscaling can move it: a few
# multiply-adds of float32 (2^-24 each) over operands at most the block's largest
# logit. 2^-14 leaves a thousandfold room: a cell inside it is upscaled pixel by pixel.
ROUNDING = 2.0**-14
TINY = 1e-30  # the margins' floor: subnormal logits round by an absolute amount, not a relative one
# How far from a level a crossed pixel's value, as cells compute it, may lie and still
# fall on the other side in F.interpolate's kernel (one resize: each is within ~3 ulps
# of the exact value, of the largest logit; 2^-20 is 8 ulps). At the canvas such a
# pixel is computed again as ATen's kernel rounds, or its candidate doubted. (A review's
# bound: cells' lerp within 10 rounding units, ATen's within 4, against 16: a change to
# ``_upscaled``'s arithmetic must keep that.)
NEAR = 2.0**-20
# Past this share of the pixels in crossed cells, their gathers cost more than the
# dense pass (measured on a CPU: ``benchmarks/candidate_scores.py``).
CROSSED_SHARE = 0.25
# On a CPU the per-pixel and per-cell work is NumPy's (comparisons ~8x torch's, reductions
# along rows of 4 ~40x; torch's threads cost more than they give at these sizes); False:
# torch's everywhere, as on a GPU (the tests run that code so).
NUMPY = True


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
    candidates' (the caller scores them by the dense pass); None where crossed cells
    are too many. ``lerp``: one resize (the photo at the canvas's size): pixels computed
    as inductor's ``F.interpolate``, those about a level again as ATen's kernel; else as
    ``separable_upscale``, within float rounding of the two resizes (as the compiled
    pass there), none doubted."""
    low = low_res[:, 0]
    device = low.device
    levels = (threshold - offset, threshold, threshold + offset)  # union, box, intersection
    smallest, largest = torch.aminmax(low)
    size = float(torch.maximum(-smallest, largest))
    if not math.isfinite(size):  # (NaN or infinite logits: the dense pass says what stock says)
        return None
    # Per level, the cells wholly above it (a least logit past it, by the margin: bit i)
    # and wholly below it (a greatest logit short of it: bit 3 + i); the others it crosses.
    margins = [ROUNDING * (size + abs(level)) + TINY for level in levels]
    read = low[:, : max(rows.starts) + rows.taps, : max(cols.starts) + cols.taps]
    cells = _window(_window(_marks(read, levels, margins), rows, 1), cols, 2)  # [N, Gr, Gc] uint8
    marks = _host(cells)
    crossing = _device(~(marks | (marks >> 3)) & 7).flatten()  # the levels crossing each cell
    where = _nonzero(crossing)
    if len(where) * rows.piece * cols.piece > CROSSED_SHARE * len(low) * len(rows.index) * len(cols.index):
        return None
    counts = [_pixels_of(cells, bit, rows, cols) for bit in range(3)]
    boxes = _full_extents(cells, 1, rows, cols)
    # The crossed cells' pixels, once for each level that crosses a cell, level by level:
    # which lie above it (by a margin at the canvas, where the pixels about it are settled apart).
    crossed = crossing[where]
    at = [where[_nonzero(crossed & (1 << i))] for i in range(3)]
    ends = np.cumsum([len(cells) for cells in at]).tolist()
    spans = list(zip([0, *ends], ends))  # each level's cells, of the P
    _, gr, gc = cells.shape
    every = torch.cat(at)
    n, r, c = every // (gr * gc), (every // gc) % gr, every % gc
    values = _upscaled(low, n, r, c, rows, cols, lerp)  # [R, C, P]
    near = [NEAR * (size + abs(level)) + TINY if lerp else 0.0 for level in levels]
    over = _above(values, spans, [level + margin for level, margin in zip(levels, near)])
    count = _popcount(over)
    doubtful = torch.zeros(len(low), dtype=torch.bool, device=device)
    if lerp:
        about = _nonzero(_popcount(_above(values, spans, [lv - m for lv, m in zip(levels, near)])) != count)
        doubted = _settle(low, over, count, about, (n, r, c), rows, cols, levels, spans)
        doubtful[n[doubted]] = True
    level = torch.cat([torch.full((end - start,), i, device=device) for i, (start, end) in enumerate(spans)])
    added = torch.zeros(3 * len(low), dtype=torch.long, device=device).index_add_(0, n * 3 + level, count)
    union, _, intersection = (whole + added.view(-1, 3)[:, i] for i, whole in enumerate(counts))
    box = slice(*spans[1])  # the box's level's cells
    _add_extents(boxes, over[:, :, box], n[box], rows.first[r[box]], cols.first[c[box]])
    left, top, right, bottom = boxes
    filled = bottom >= 0
    xyxy = torch.stack([left, top, right, bottom], dim=-1) * filled[:, None]  # an empty mask: zeros, as stock's
    return intersection.to(torch.int32) / union.to(torch.int32), xyxy, doubtful  # as segment-anything divides


def _settle(low, over, count, about, cells, rows: AxisCells, cols: AxisCells, levels, spans) -> torch.Tensor:
    """Of the cells ``about`` (a pixel within ``NEAR`` of its level), pixels computed again as
    ATen's kernel rounds them, into ``over`` and ``count``; the cells that could not be
    (the kernel rounds otherwise, or a block spans too many binades: ``_as_aten``)."""
    if not len(about) or rows.aten is None or cols.aten is None or not kernel_fuses(low.device):
        return about
    n, r, c = (v[about] for v in cells)
    span = 27 - 2 * max(rows.aten_bits, cols.aten_bits)
    again, proven = _as_aten(_blocks(low, n, r, c, rows, cols).permute(2, 0, 1), rows.aten[r], cols.aten[c], span)
    level = torch.bucketize(about, torch.tensor([end for _, end in spans], device=low.device), right=True)
    above = again.permute(1, 2, 0) > torch.tensor(levels, dtype=torch.float32, device=low.device)[level]
    over[:, :, about] = above
    count[about] = _popcount(above)
    return about[~proven]


def _on_host(tensor: torch.Tensor) -> bool:
    return NUMPY and tensor.device.type == "cpu"


def _host(tensor: torch.Tensor):  # a CPU tensor as a NumPy array (the same memory), else the tensor
    return tensor.numpy() if _on_host(tensor) else tensor


def _device(array) -> torch.Tensor:  # _host's inverse
    return torch.from_numpy(array) if isinstance(array, np.ndarray) else array


def _nonzero(flat: torch.Tensor) -> torch.Tensor:
    """Indices of a flat tensor's nonzero entries ([M] long; NumPy's over bools: ~2x over bytes)."""
    if _on_host(flat):
        return torch.from_numpy(np.flatnonzero(flat.numpy() != 0))
    return torch.nonzero(flat)[:, 0]


def _marks(low: torch.Tensor, levels, margins) -> torch.Tensor:
    """Each low-res logit's bits ([N, h, w] uint8): bit i, above level i by its margin;
    bit 3 + i, below it by its margin (NumPy's into one buffer: torch allocates anew)."""
    tests = [(bit, level + margin, True) for bit, (level, margin) in enumerate(zip(levels, margins))]
    tests += [(3 + bit, level - margin, False) for bit, (level, margin) in enumerate(zip(levels, margins))]
    if not _on_host(low):
        marks = torch.zeros(low.shape, dtype=torch.uint8, device=low.device)
        for bit, than, above in tests:
            marks |= ((low > than) if above else (low < than)).to(torch.uint8) << bit
        return marks
    values, host = low.numpy(), np.zeros(low.shape, dtype=np.uint8)
    mark = np.empty(low.shape, dtype=bool)
    for bit, than, above in tests:
        (np.greater if above else np.less)(values, np.float32(than), out=mark)  # (float32, as torch compares)
        byte = mark.view(np.uint8)
        np.add(host, np.multiply(byte, np.uint8(1 << bit), out=byte), out=host)  # (a shift: ~8x a multiply)
    return torch.from_numpy(host)


def _window(marks: torch.Tensor, axis: AxisCells, dim: int) -> torch.Tensor:
    """Along ``dim``: the AND of ``marks`` over each cell's taps (``axis.taps`` rows from
    its start; a window past the last row reads the last ``taps`` rows, a superset of
    its own): the bits set in every logit a cell reads. Cells at consecutive starts
    are ANDed a stretch at a time (a few stretches: the edges' cells share starts)."""
    size, taps = marks.shape[dim], min(axis.taps, marks.shape[dim])
    starts = [min(start, size - taps) for start in axis.starts]
    breaks = [j for j in range(1, len(starts)) if starts[j] != starts[j - 1] + 1]
    if len(breaks) > 8:  # (a photo smaller than the canvas: cells skip low-res rows)
        at = torch.tensor(starts, device=marks.device)
        bound = marks.index_select(dim, at)
        for k in range(1, taps):
            bound &= marks.index_select(dim, at + k)
        return bound
    shape = list(marks.shape)
    shape[dim] = len(starts)
    bound = torch.empty(shape, dtype=marks.dtype, device=marks.device)
    for j, end in zip([0, *breaks], [*breaks, len(starts)]):
        stretch = bound.narrow(dim, j, end - j)
        stretch.copy_(marks.narrow(dim, starts[j], end - j))
        for k in range(1, taps):
            stretch &= marks.narrow(dim, starts[j] + k, end - j)
    return bound


def _pixels_of(cells: torch.Tensor, bit: int, rows: AxisCells, cols: AxisCells) -> torch.Tensor:
    """Pixels in the cells with ``bit`` set ([N, Gr, Gc] uint8), per candidate: each cell's
    rows times its columns, the usual length once and the odd cells' difference apart."""
    marked = _host(cells) & (1 << bit)
    if isinstance(marked, np.ndarray):  # (a byte sum along the rows: ~2x a bool's)
        per_row = torch.from_numpy(np.add.reduce(marked, axis=2, dtype=np.int64)) >> bit
    else:
        per_row = marked.sum(-1, dtype=torch.long) >> bit  # [N, Gr]
    per_row *= cols.piece
    if len(cols.odd):
        per_row += (((cells.index_select(2, cols.odd) >> bit) & 1) * (cols.length[cols.odd] - cols.piece)).sum(-1)
    return (per_row * rows.length).sum(-1)  # (not a matmul: CUDA has none for integers)


def _full_extents(cells: torch.Tensor, bit: int, rows: AxisCells, cols: AxisCells) -> list[torch.Tensor]:
    """[left, top, right, bottom] of the pixels in the cells with ``bit`` set ([N, Gr, Gc]
    uint8), per candidate ([N] each; a photo's size, or -1 for the right and bottom,
    where none)."""
    marked = _host(cells) & (1 << bit)
    in_row, in_col = _device(marked.any(2)).bool(), _device(marked.any(1)).bool()  # [N, Gr], [N, Gc]
    (left, right), (top, bottom) = _span(in_col, cols), _span(in_row, rows)
    return [left, top, right, bottom]


def _span(marked: torch.Tensor, axis: AxisCells) -> tuple[torch.Tensor, torch.Tensor]:
    """(first pixel, last pixel) of the cells marked along an axis ([N, G] bool): the
    axis's length and -1 where none is."""
    size = len(axis.index)
    if not marked.shape[1]:
        none = torch.zeros(len(marked), dtype=torch.long, device=marked.device)
        return none + size, none - 1
    first = torch.where(marked, axis.first, size).amin(1)
    last = torch.where(marked, axis.first + axis.length - 1, -1).amax(1)
    return first, last


def _blocks(low: torch.Tensor, n, r, c, rows: AxisCells, cols: AxisCells) -> torch.Tensor:
    """The low-res logits each cell reads ([K, Kc, P]: its block; the P last, as every
    per-pixel array here: operations along long rows, ~3x those along rows of 4)."""
    h, w = low.shape[-2:]
    flat = (n * h + rows.reads.index_select(1, r)) * w  # [K, P]
    flat = flat[:, None, :] + cols.reads.index_select(1, c)[None]
    if _on_host(low):  # (NumPy's take: ~2/3 of torch's)
        return torch.from_numpy(np.take(low.numpy(), flat.numpy()))
    return torch.take(low, flat)


def _upscaled(low, n, r, c, rows: AxisCells, cols: AxisCells, lerp: bool) -> torch.Tensor:
    """The cells' pixels upscaled ([R, C, P]) from their block of low-res logits (NaN
    past the cell)."""
    block = _blocks(low, n, r, c, rows, cols)
    if lerp:  # inductor's decomposition of bilinear resizing: columns first, then rows, as lerps
        col_step, row_step = cols.weights[1].index_select(1, c), rows.weights[1].index_select(1, r)  # [C|R, P]
        top = block[0, 0] + (block[0, 1] - block[0, 0]) * col_step  # [C, P]
        bottom = block[1, 0] + (block[1, 1] - block[1, 0]) * col_step
        values = (bottom - top)[None] * row_step[:, None]
        values += top[None]
        return values
    # separable_upscale: rows first, tap by tap, then columns
    by_rows = block[0][None] * rows.weights[0].index_select(1, r)[:, None]  # [R, Kc, P]
    for k in range(1, rows.taps):
        by_rows += block[k][None] * rows.weights[k].index_select(1, r)[:, None]
    values = by_rows[:, None, 0] * cols.weights[0].index_select(1, c)[None]
    for k in range(1, cols.taps):
        values += by_rows[:, None, k] * cols.weights[k].index_select(1, c)[None]
    return values


def _above(values: torch.Tensor, spans, levels) -> torch.Tensor:
    """Which pixels lie above their cell's level ([R, C, P] bool): the cells of
    ``spans[i]`` (a slice of the P) above ``levels[i]``, as float32 (as torch compares
    a float32 tensor with a Python float)."""
    if not _on_host(values):
        return torch.cat([values[:, :, s:e] > level for (s, e), level in zip(spans, levels)], 2)
    host, over = values.numpy(), np.empty(values.shape, dtype=bool)
    for (s, e), level in zip(spans, levels):
        np.greater(host[:, :, s:e], np.float32(level), out=over[:, :, s:e])
    return torch.from_numpy(over)


def _popcount(over: torch.Tensor) -> torch.Tensor:
    """True pixels of each cell ([R, C, P] bool -> [P] long)."""
    if not _on_host(over):
        return over.flatten(0, 1).sum(0)
    dtype = np.uint8 if over.shape[0] * over.shape[1] < 256 else np.int32
    return torch.from_numpy(np.add.reduce(over.numpy().view(np.uint8), axis=(0, 1), dtype=dtype).astype(np.int64))


def _as_aten(block: torch.Tensor, row_weight: torch.Tensor, col_weight: torch.Tensor, span: int):
    """Pixels ([P, R, C] float32) of 2x2 blocks ([P, 2, 2]) at ATen's weights ([P, R, 2],
    [P, C, 2]) as its CPU kernel rounds them (``separable_resize.fused_lerp`` along each
    block row, then across), and which blocks that is proven for ([P] bool): those whose
    nonzero logits' binary exponents lie within ``span`` (27 less twice the weights' bits:
    then every float64 sum is exact, its operands' bits spanning at most 53)."""
    a = block.double()
    top = fused_lerp(a[:, 0, None, 0], col_weight[..., 0], a[:, 0, None, 1], col_weight[..., 1])  # [P, C]
    bottom = fused_lerp(a[:, 1, None, 0], col_weight[..., 0], a[:, 1, None, 1], col_weight[..., 1])
    values = fused_lerp(top[:, None, :], row_weight[..., 0, None], bottom[:, None, :], row_weight[..., 1, None])
    _, exponent = torch.frexp(block.flatten(1))
    nonzero = block.flatten(1) != 0
    spread = torch.where(nonzero, exponent, -1000).amax(1) - torch.where(nonzero, exponent, 1000).amin(1)
    return values.float(), spread <= span


def _add_extents(boxes: list[torch.Tensor], over: torch.Tensor, n, row0, col0) -> None:
    """Widen [left, top, right, bottom] by the cells' pixels above the threshold ([R, C, P];
    a cell's rows and columns run from ``row0`` and ``col0``)."""
    host = _host(over)  # (NumPy's any along rows of P: ~40x torch's)
    in_row, in_col = _device(host.any(1)), _device(host.any(0))  # [R, P], [C, P]
    none = torch.iinfo(torch.long).max
    edges = []
    for marked, origin in ((in_col, col0), (in_row, row0)):
        first, last = torch.full_like(n, none), torch.full_like(n, -1)
        for k in range(len(marked)):
            last = torch.where(marked[k], origin + k, last)
            first = torch.where(marked[-1 - k], origin + len(marked) - 1 - k, first)
        edges.append((first, last))
    (left, right), (top, bottom) = edges
    for i, (edge, how) in enumerate(zip((left, top, right, bottom), ("amin", "amin", "amax", "amax"))):
        # cells without a pixel above give each reduction's identity (no read-back)
        boxes[i] = boxes[i].scatter_reduce(0, n, edge, how)
