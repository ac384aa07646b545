"""Which path scores SAM's candidates (stability score and box), and the scoring.

A candidate's stability score and box need its logits at the crop's size. Eagerly,
by cells (``cell_scoring``: only the pixels a threshold passes near are upscaled),
or where cells would not pay (noisy logits: many cells crossed), segment-anything's
helpers over materialised logits (in groups that fit on a CPU); compiled,
``CompiledScores``' one fused pass that never writes them. At the model's canvas
cells give the helpers' numbers bit for bit (a pixel within an ulp or two of a level
is computed again as ATen's CPU kernel rounds it; a candidate where that is not proven,
as on a GPU, goes to the helpers); the compiled pass rounds an edge's pixels
differently from ATen's kernel, so there a rare candidate (~1 in 1,000 on blobs, a
review found, 2026-12-06) differs by a pixel in a count or a box edge. Past the
canvas (``amg_utils.past_canvas``) all three differ by float rounding. Which path
scores a crop depends on the run's options, the device and the crop's size alone,
never on how long the run has gone, so a kill and resume gives the same records:

* CUDA: compiled from the first crop (``compiled=None``).
* A CPU: crops at or under the canvas by cells (the helpers' bits; until 2026-12-06 a
  CPU compiled them once eager scoring had cost a cold compile, which changed a rare
  record by when the switch came, and was faster with many candidates: 768 at
  1024x768, 1.4 s against cells' 3.1 s, since 0.5 s against the compiled pass's 1.1 s
  on 2 cores, ``benchmarks/candidate_scores.py``); crops
  past the canvas of ``COMPILE_PIXELS`` or more compiled from the first one where
  there is a C++ compiler (one such photo's eager scoring costs a compile), smaller
  ones by cells.
* ``compiled=True`` (``--compile``): compiled at every size from the first crop;
  ``False``: eagerly always.
"""

from __future__ import annotations

import os
import shutil

import torch
from segment_anything.utils.amg import batched_mask_to_box

from usesearch.masks import sam_compile
from usesearch.masks.amg_utils import (
    CompiledScores,
    cpu_upscale_chunk,
    indices_of,
    past_canvas,
    stability_score,
    upscale_logits,
)
from usesearch.masks.cell_grid import axis_cells
from usesearch.masks.cell_scoring import cell_scores

# A crop past the canvas this large is scored compiled on a CPU from the first one. Tiny SAM,
# 768 candidates, 2 cores: 1 MP 5.5 s a photo eagerly, 1.4 s compiled after an 18 s cold
# compile (paid back by the fifth photo; ~3 s from torch's disk cache in a later process);
# 12 MP 94 s against 15 s. Below it (a demo's photos past tiny's 256-px canvas) the compile
# would not pay.
COMPILE_PIXELS = 1_000_000
# Photo pixels scored by cells at a time on a CPU (a 12 MP photo's candidates 22 at a time): the
# crossed cells' pixels, upscaled, are at most a quarter of them (cell_scoring.CROSSED_SHARE),
# at ~30 bytes each (a CPU's dense pass takes CPU_MASK_BYTES, 2 GiB).
CELL_PIXELS = 1 << 28
# On a GPU: its prompt batch is sized for the dense pass, which takes more, so a photo of
# the canvas's size scores it in one group (3,072 candidates of 1024x768 are 2.4G pixels);
# one of many megapixels in groups (3,072 of a 12 MP photo at once: ~40 GB at their peak).
GPU_CELL_PIXELS = 1 << 32


class CandidateScoring:
    """Stability scores and boxes of a prompt batch's candidates, by the path the module
    docstring gives. ``side``: the model's canvas; ``threshold``: its mask threshold."""

    def __init__(self, side: int, threshold: float, offset: float, device: torch.device, compiled: bool | None):
        self.side, self.threshold, self.offset, self.device = side, threshold, offset, device
        on_now = device.type == "cuda" if compiled is None else compiled
        self.compiled = self._compiled() if on_now else None
        # crops past the canvas of COMPILE_PIXELS or more, compiled when the first one comes
        self.compiled_large = compiled is None and not on_now and shutil.which(os.environ.get("CXX", "g++")) is not None
        self.compiled_any_size = on_now

    def __call__(
        self, low_res: torch.Tensor, input_size, crop_hw: tuple[int, int], keep_above: float
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(kept: indices [K], stability scores [K], boxes XYXY [K]) of the candidates'
        low-res logits [N, 1, h, w]; kept: those of a stability score of at least
        ``keep_above`` where it is above 0 (segment-anything's filter), in order, else
        None: every candidate."""
        low_res = low_res.float()  # (cells' exactness is float32's; the generator's decoder may give bfloat16)
        large = self.compiled_large and past_canvas(self.side, crop_hw) and crop_hw[0] * crop_hw[1] >= COMPILE_PIXELS
        if large and self.compiled is None:
            self.compiled = self._compiled()
        if self.compiled is not None and (self.compiled_any_size or large):
            return _kept(*self.compiled(low_res, input_size, crop_hw), keep_above)
        by_cells = self.by_cells(low_res, input_size, crop_hw)
        return _kept(*by_cells, keep_above) if by_cells else self._dense(low_res, input_size, crop_hw, keep_above)

    def by_cells(self, low_res: torch.Tensor, input_size, crop_hw) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(stability scores, boxes) by ``cell_scoring``, CELL_PIXELS at a time; None where
        a group's crossed cells are too many or the resize does not cut into runs (a photo
        much smaller than the canvas): the dense pass then scores them all."""
        if not len(low_res) or min(input_size) < 1:  # (a sliver the dense pass answers in its own words)
            return None
        try:
            rows, cols = (
                axis_cells(self.side, low_res.shape[-1], int(i), int(o), low_res.device)
                for i, o in zip(input_size, crop_hw)
            )
        except ValueError:
            return None
        lerp = tuple(input_size) == tuple(crop_hw) and rows.taps == cols.taps == 2  # one resize
        budget = GPU_CELL_PIXELS if self.device.type == "cuda" else CELL_PIXELS
        step = max(1, budget // (crop_hw[0] * crop_hw[1]))
        stabilities, boxes = [], []
        for start in range(0, len(low_res), step):
            group = low_res[start : start + step]
            part = cell_scores(group, rows, cols, self.threshold, self.offset, lerp)
            if part is None:
                return None
            stability, box, doubtful = part
            doubted = indices_of(doubtful)  # (one read-back)
            if len(doubted):  # a pixel about a level: the dense pass's own numbers
                _, stability[doubted], box[doubted] = self._dense(group[doubted], input_size, crop_hw)
            stabilities.append(stability)
            boxes.append(box)
        return torch.cat(stabilities), torch.cat(boxes)

    def _dense(self, low_res: torch.Tensor, input_size, crop_hw, keep_above: float = 0.0):
        """``__call__``'s answer over materialised logits, upscaled a group at a time on a
        CPU (a large photo's full-size logits), at once on a GPU."""
        chunk = cpu_upscale_chunk(self.side, crop_hw) if self.device.type == "cpu" else max(1, len(low_res))
        kept_parts, stabilities, box_parts = [], [], []
        for start in range(0, max(1, len(low_res)), chunk):  # (once when empty, as the library takes it)
            logits = upscale_logits(low_res[start : start + chunk], self.side, input_size, crop_hw)
            stability = stability_score(logits, self.threshold, self.offset)
            if keep_above > 0.0:  # no box for a candidate the filter drops
                kept_parts.append(indices_of(stability >= keep_above))
                logits, stability = logits[kept_parts[-1]], stability[kept_parts[-1]]
                kept_parts[-1] += start  # (the chunk's indices, in the whole batch)
            stabilities.append(stability)
            box_parts.append(batched_mask_to_box(logits > self.threshold))
            del logits
        kept = torch.cat(kept_parts) if kept_parts else None
        return kept, torch.cat(stabilities), torch.cat(box_parts)

    def compile(self) -> None:
        """``CompiledScores`` at every size from now on (``--compile``: compiled numbers
        chosen from the first photo, as a GPU's default)."""
        if self.compiled is None:
            self.compiled = self._compiled()
        self.compiled_any_size = True

    def _compiled(self) -> CompiledScores:  # with the backend every compiled part of SAM takes
        return CompiledScores(self.side, self.threshold, self.offset, sam_compile.COMPILE_BACKEND)


def _kept(stability: torch.Tensor, boxes: torch.Tensor, keep_above: float):
    """``CandidateScoring``'s answer from every candidate's scores and boxes."""
    if keep_above <= 0.0:
        return None, stability, boxes
    kept = indices_of(stability >= keep_above)
    return kept, stability[kept], boxes[kept]
