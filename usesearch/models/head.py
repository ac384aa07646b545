"""Segment embedding head (paper §3.2): mask-area-weighted pooling + one linear layer.

A segment's weight in a patch is the area of the segment inside that patch divided
by the patch area; the segment vector is the weight-normalised average of the patch
embeddings, projected into CLIP's joint space and L2-normalised.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from usesearch.errors import BadArgumentError
from usesearch.masks import rle


def _axis_overlap(num_pixels: int, num_cells: int, cell_size: float) -> torch.Tensor:
    """[num_cells, num_pixels]: length of pixel [y, y+1) inside cell [i*s, (i+1)*s)."""
    starts = torch.arange(num_cells, dtype=torch.float64)[:, None] * cell_size
    pixel = torch.arange(num_pixels, dtype=torch.float64)[None, :]
    overlap = torch.minimum(starts + cell_size, pixel + 1) - torch.maximum(starts, pixel)
    return overlap.clamp_(min=0).float()


def cell_coverage(
    masks: np.ndarray | torch.Tensor,
    grid_hw: tuple[int, int],
    cell_hw: tuple[float, float],
    block_elements: int = 1 << 24,
) -> torch.Tensor:
    """Fraction of each grid cell covered by each mask (on the masks' device), cells of
    ``cell_hw`` pixels laid from the top-left corner; cells past the mask's edge count
    that part as uncovered (letterbox padding). Exact for fractional cell sizes:
    separable pixel/cell overlap matrices, so no upsampled copy of the masks is made.

    Memory stays bounded whatever the image size: masks are converted to float a
    block of at most ``block_elements`` pixels at a time (whole masks for small
    images, bands of rows of one mask for large ones), never the whole stack."""
    masks = torch.as_tensor(np.ascontiguousarray(masks) if isinstance(masks, np.ndarray) else masks)
    if masks.ndim != 3:
        raise BadArgumentError(f"masks must be [N, H, W], got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    gh, gw = grid_hw
    device = masks.device  # computed where the masks are: a GPU's stack never crosses to the host
    if n == 0:
        return torch.zeros(0, gh * gw, device=device)
    rows = _axis_overlap(h, gh, cell_hw[0]).to(device)  # [gh, H]
    cols = _axis_overlap(w, gw, cell_hw[1]).to(device)  # [gw, W]
    out = torch.zeros(n, gh, gw, device=device)
    per_block = block_elements // max(1, h * w)
    if per_block >= 1:
        for start in range(0, n, per_block):
            block = masks[start : start + per_block].float()
            out[start : start + per_block] = torch.einsum("ih,nhw,jw->nij", rows, block, cols)
    else:
        band = max(1, block_elements // max(1, w))
        for i in range(n):
            for top in range(0, h, band):
                block = masks[i, top : top + band].float()  # [b, W]
                out[i] += rows[:, top : top + band] @ (block @ cols.T)
    out = out.flatten(1) / (cell_hw[0] * cell_hw[1])
    empty = torch.nonzero(out.sum(1) == 0).flatten().tolist()
    if empty:
        raise BadArgumentError(f"masks {empty[:10]} are empty; every segment needs at least one pixel")
    return out


def rle_cell_coverage(
    masks: rle.RleStack,
    grid_hw: tuple[int, int],
    cell_hw: tuple[float, float],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``cell_coverage`` read from the RLE runs, with no pixels decoded, on the CPU
    (``device`` None or a CPU) or on the model's GPU (``rle_cell_coverage_on``). A pixel's
    share of a cell is rows[i, y] * cols[j, x]; summed over a run of column-major
    pixels [s, e) it is F(e) - F(s), where F is a prefix sum that separates into the
    rows' prefix sums and the columns' (so each mask costs two [gh, R] x [R, gw]
    products over its R runs). Float64 inside: the prefix sums reach H * W.

    In NumPy, not torch: a photo's masks make hundreds of small operations, each of
    which torch's thread pool dispatches at a cost (and, beside the indexer's reader
    threads, waits for busy cores): 100 masks of a 1024-px photo took 33 ms on one
    core in torch, 16 ms here (``benchmarks/pooling_weights.py``), and this runs in
    line between SAM and the backbones on a GPU."""
    if device is not None and torch.device(device).type != "cpu":
        return rle_cell_coverage_on(torch.device(device), masks, grid_hw, cell_hw)
    n, h, w = masks.shape
    gh, gw = grid_hw
    if n == 0:
        return torch.zeros(0, gh * gw)
    row_prefix, col_prefix, col_at = (t.numpy() for t in _prefix_sums(h, w, grid_hw, cell_hw))
    full = row_prefix[:, h]  # a whole column's share in each row of cells
    out = np.zeros((n, gh, gw))
    for i, r in enumerate(masks.rles):
        starts, ends = rle.runs(r)
        xs, ys = np.divmod(starts, h)
        xe, ye = np.divmod(ends, h)
        out[i] = (
            np.outer(full, (col_prefix[:, xe] - col_prefix[:, xs]).sum(1))
            + row_prefix[:, ye] @ col_at[:, xe].T
            - row_prefix[:, ys] @ col_at[:, xs].T
        )
    return _checked(torch.from_numpy(out.reshape(n, -1) / (cell_hw[0] * cell_hw[1])).float())


def _prefix_sums(
    h: int, w: int, grid_hw: tuple[int, int], cell_hw: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (row_prefix [gh, H + 1]: rows[:, :y] summed; col_prefix [gw, W + 1]:
    cols[:, :x] summed; col_at [gw, W + 1]: each column's share, column W past the image)."""
    rows = _axis_overlap(h, grid_hw[0], cell_hw[0]).double()  # [gh, H]
    cols = _axis_overlap(w, grid_hw[1], cell_hw[1]).double()  # [gw, W]
    return F.pad(rows.cumsum(1), (1, 0)), F.pad(cols.cumsum(1), (1, 0)), F.pad(cols, (0, 1))


@lru_cache(maxsize=8)
def _prefix_sums_on(h: int, w: int, grid_hw: tuple[int, int], cell_hw: tuple[float, float], device: torch.device):
    """``_prefix_sums`` on ``device``, once a photo shape: made anew they were three copies
    to a card a photo (an archive's photos share a few shapes)."""
    return tuple(t.to(device) for t in _prefix_sums(h, w, grid_hw, cell_hw))


RUNS_PER_CHUNK = 1 << 18  # padded runs a chunk of masks takes on the device (~48 MB per [chunk, grid, runs] float64)


def rle_cell_coverage_on(
    device: torch.device, masks: rle.RleStack, grid_hw: tuple[int, int], cell_hw: tuple[float, float]
) -> torch.Tensor:
    """``rle_cell_coverage``'s arithmetic on ``device`` in a few batched operations
    (the masks' runs padded to the longest, a padded run [0, 0) adding exactly nothing),
    where the CPU's takes a loop over the masks: on a GPU only the runs go up (a few MB)
    and the host's share is reading them from the RLEs. Same sums, in another order."""
    n, h, w = masks.shape
    gh, gw = grid_hw
    if n == 0:
        return torch.zeros(0, gh * gw, device=device)
    padded = padded_runs(masks)
    _refuse_empty(np.flatnonzero((padded[1] - padded[0]).sum(1) <= 0))  # on the host: no read-back from a card
    longest = padded.shape[2]
    starts, ends = torch.from_numpy(padded).to(device)
    row_prefix, col_prefix, col_at = _prefix_sums_on(h, w, tuple(grid_hw), tuple(cell_hw), device)
    full = row_prefix[:, h]
    parts = []
    chunk = max(1, RUNS_PER_CHUNK // longest)
    for lo in range(0, n, chunk):
        s, e = starts[lo : lo + chunk], ends[lo : lo + chunk]
        xs, ys, xe, ye = s // h, s % h, e // h, e % h
        spans = (col_prefix[:, xe] - col_prefix[:, xs]).sum(-1)  # [gw, chunk]
        inside = torch.einsum("gnr,wnr->ngw", row_prefix[:, ye], col_at[:, xe]) - torch.einsum(
            "gnr,wnr->ngw", row_prefix[:, ys], col_at[:, xs]
        )
        parts.append(full[None, :, None] * spans.T[:, None, :] + inside)
    return (torch.cat(parts).reshape(n, -1) / (cell_hw[0] * cell_hw[1])).float()


def padded_runs(masks: rle.RleStack) -> np.ndarray:
    """[2, N, longest] int64: each mask's run starts and ends (column-major pixel
    indices), padded with empty runs [0, 0): the host's share of ``rle_cell_coverage_on``."""
    runs = [rle.runs(r) for r in masks.rles]
    lengths = np.array([len(starts) for starts, _ in runs])
    mask_of = np.repeat(np.arange(len(runs)), lengths)
    position = np.arange(len(mask_of)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.zeros((2, len(runs), max(1, int(lengths.max()))), np.int64)
    padded[0, mask_of, position] = np.concatenate([starts for starts, _ in runs])
    padded[1, mask_of, position] = np.concatenate([ends for _, ends in runs])
    return padded


def _checked(coverage: torch.Tensor) -> torch.Tensor:
    _refuse_empty(torch.nonzero(coverage.sum(1) <= 0).flatten().tolist())
    return coverage


def _refuse_empty(empty) -> None:
    """Masks (their indices) with no pixel: refused, as a segment of no pixel pools nothing."""
    if len(empty):
        raise BadArgumentError(f"masks {list(map(int, empty[:10]))} are empty; every segment needs at least one pixel")


def patch_weights(masks: np.ndarray | torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bool masks [N,H,W] with H, W multiples of the grid -> [N, gh*gw] coverage fractions."""
    masks = torch.as_tensor(masks)
    gh, gw = grid_hw
    h, w = masks.shape[-2:]
    if h % gh or w % gw:
        raise BadArgumentError(f"mask size {h}x{w} is not a multiple of the {gh}x{gw} grid")
    return cell_coverage(masks, grid_hw, (h // gh, w // gw))


def letterbox_weights(
    masks: np.ndarray | torch.Tensor | rle.RleStack,
    grid: int,
    canvas: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Weights for masks (dense, or RLEs) of an image that the encoder letterboxed
    into a square (longest side, or ``canvas`` pixels, scaled to the input; padding
    at the bottom/right). ``device``: where RLEs' weights are computed (the CPU when None)."""
    h, w = masks.shape[-2:]
    cell = (canvas or max(h, w)) / grid
    if isinstance(masks, rle.RleStack):
        return rle_cell_coverage(masks, (grid, grid), (cell, cell), device)
    return cell_coverage(masks, (grid, grid), (cell, cell))


class SegmentEmbeddingHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, z: torch.Tensor, weights: torch.Tensor, image_index: torch.Tensor | None = None) -> torch.Tensor:
        """z [B,P,D] patch features; weights [N,P]; image_index [N] says which image each
        segment is on (all on image 0 when omitted) -> unit vectors [N, out_dim]."""
        # Pooled in float32 whatever autocast is on (training's bf16 on a GPU): a bf16
        # product written into the float32 result was refused, and an area-weighted sum
        # over thousands of patches wants float32 anyway. The projection may autocast.
        with torch.autocast(z.device.type, enabled=False):
            weights, z = weights.float(), z.float()
            if image_index is None:
                pooled = weights @ z[0]
            else:
                # One matmul per image: gathering z per segment would copy [N, P, D].
                pooled = z.new_empty(weights.shape[0], z.shape[-1])
                for b in torch.unique(image_index).tolist():
                    rows = image_index == b
                    pooled[rows] = weights[rows] @ z[b]
            pooled = pooled / weights.sum(1, keepdim=True)
        return F.normalize(self.proj(pooled), dim=-1)
