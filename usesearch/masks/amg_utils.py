"""The mask generator's pure helpers (``amg.py`` holds the generator), as segment-anything
keeps its own in ``segment_anything.utils.amg``: the candidates' tensor container, the
decoder batch that fits a GPU, upscaling, the stability score, boxes and box NMS."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import (
    batched_mask_to_box,
    calculate_stability_score,
    remove_small_regions,
)
from torchvision.ops import batched_nms

from usesearch.devices import out_of_memory_in
from usesearch.errors import first_line
from usesearch.masks.separable_resize import axis_taps, separable_upscale

log = logging.getLogger(__name__)

CPU_POINTS_PER_BATCH = 64  # segment-anything's default; a CPU gains nothing from more
GPU_MEMORY_SHARE = 0.4  # of the free GPU memory, what one prompt batch's masks may take
# On a CPU, what the masks upscaled at once (a prompt batch's, or kept ones encoded) may
# take: 64 prompts' at once took 12 GB on a 12 MP photo, and asked for 38 GB on a 49 MP one.
CPU_MASK_BYTES = 2 * 2**30
# upscale_to_input upscales at least this many low-res rows and columns: with fewer, the
# CPU kernel takes another path for the smaller output, whose rounding differs by an ulp.
MIN_LOW_RES = 64


@dataclass
class Candidates:
    """Masks not yet materialised: low-resolution logits and what filtering needs."""

    low_res: torch.Tensor  # [N, 1, 256, 256] float32 logits
    iou: torch.Tensor  # [N] predicted IoU
    stability: torch.Tensor  # [N]
    boxes: torch.Tensor  # [N, 4] XYXY, inclusive max (segment-anything's convention)
    points: torch.Tensor  # [N, 2] the prompt of each mask
    crop: torch.Tensor  # [N] index into the crop list

    def __getitem__(self, keep) -> Candidates:
        keep = indices_of(keep)
        return Candidates(
            *(t[keep] for t in (self.low_res, self.iou, self.stability, self.boxes, self.points, self.crop))
        )

    def __len__(self) -> int:
        return len(self.iou)

    @staticmethod
    def cat(parts: list[Candidates], device) -> Candidates:
        if not parts:
            empty = torch.zeros(0, device=device)
            return Candidates(
                empty.reshape(0, 1, 256, 256),
                empty,
                empty,
                empty.reshape(0, 4).long(),
                empty.reshape(0, 2).double(),
                empty.long(),
            )
        return Candidates(
            *(torch.cat(ts) for ts in zip(*((p.low_res, p.iou, p.stability, p.boxes, p.points, p.crop) for p in parts)))
        )


def indices_of(keep):
    """A bool mask as the indices it keeps (one read-back from a GPU; indexing several
    tensors by the mask itself reads back once each), else ``keep`` as given."""
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
        return keep.nonzero()[:, 0]
    return keep


def prompt_batch(free_bytes: int, side: int, crop_hw: tuple[int, int], points: int) -> int:
    """Prompts per decoder batch on a GPU with ``free_bytes`` free: as many as fit in
    ``GPU_MEMORY_SHARE`` of it (each prompt's three masks as float32 logits at the
    larger of the model's canvas and the crop, with their thresholded copies and
    counts: ~8 bytes a pixel), in multiples of 64, at least 64, at most ``points``."""
    per_point = 3 * max(side * side, crop_hw[0] * crop_hw[1]) * 8
    fit = int(free_bytes * GPU_MEMORY_SHARE) // per_point // CPU_POINTS_PER_BATCH * CPU_POINTS_PER_BATCH
    return max(CPU_POINTS_PER_BATCH, min(points, fit))


def cpu_upscale_chunk(side: int, crop_hw: tuple[int, int]) -> int:
    """Masks of a prompt batch upscaled and scored at a time on a CPU: as many as fit in
    ``CPU_MASK_BYTES`` (float32 logits at the model's canvas, then at the crop's size
    with their thresholded copies: ~7 bytes a pixel), at least 1. A photo of ~1 MP still
    takes a whole batch (64 prompts' 192 masks) at once. The decoder's batch is left as
    it is: its numbers, hence the masks, depend on it."""
    return max(1, CPU_MASK_BYTES // (4 * side * side + 7 * crop_hw[0] * crop_hw[1]))


def cpu_encode_chunk(hw: tuple[int, int], most: int) -> int:
    """Kept masks upscaled and encoded at a time on a CPU: at most ``most``, fewer where
    their full-size logits and bool masks (~6 bytes a pixel) would pass ``CPU_MASK_BYTES``."""
    return max(1, min(most, CPU_MASK_BYTES // (6 * hw[0] * hw[1])))


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """segment-anything's ``calculate_stability_score`` (pixels above threshold+offset
    over pixels above threshold-offset), the same numbers. On a CPU NumPy's
    count_nonzero counts a few times faster than torch's bool sums, and this is the
    largest cost the generator adds to the model's."""
    if logits.device.type != "cpu" or not len(logits):
        return calculate_stability_score(logits, threshold, offset)
    flat = logits.detach().numpy().reshape(len(logits), -1)
    above_high = np.count_nonzero(flat > threshold + offset, axis=1).astype(np.int32)
    above_low = np.count_nonzero(flat > threshold - offset, axis=1).astype(np.int32)
    return torch.from_numpy(above_high) / torch.from_numpy(above_low)  # int32 / int32, as segment-anything divides


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Box NMS exactly as segment-anything calls it (torchvision's batched_nms with one
    category), so ties among equal scores resolve the same way."""
    return batched_nms(boxes.float(), scores, torch.zeros(len(boxes), device=boxes.device), iou_threshold=threshold)


def upscale_to_input(low_res: torch.Tensor, side: int, input_size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(low_res, (side, side), bilinear)[..., :h, :w]`` (the first step of
    ``Sam.postprocess_masks``), the same values, without computing the padding below
    and right of the resized photo, which is then cut off: a quarter of every pass
    over a 4:3 photo's candidates. Only the low-res rows and columns that the kept
    pixels read (their own and the next) are upscaled, by the same factor: an output
    pixel's source coordinate depends on the factor alone, and the next source row
    is never past the last one kept, so no clamping changes."""
    low = low_res.shape[-1]
    if side % low or low_res.shape[-2] != low:
        logits = F.interpolate(low_res, (side, side), mode="bilinear", align_corners=False)
        return logits[..., : input_size[0], : input_size[1]]
    factor = side // low
    rows, cols = (min(low, max(MIN_LOW_RES, -(-n // factor) + 1)) for n in input_size)
    logits = F.interpolate(low_res[..., :rows, :cols], scale_factor=float(factor), mode="bilinear", align_corners=False)
    return logits[..., : input_size[0], : input_size[1]]


def upscale_logits(low_res: torch.Tensor, side: int, input_size: tuple[int, int], crop_hw: tuple[int, int]):
    """``Sam.postprocess_masks`` ([N, 1, h, w] -> [N, H, W] logits), without its second
    resize when the crop already has the input's size: bilinear resizing to the same
    size returns its input exactly, and costs as much as the first resize."""
    logits = upscale_to_input(low_res, side, input_size)
    if tuple(logits.shape[-2:]) != tuple(crop_hw):
        logits = F.interpolate(logits, crop_hw, mode="bilinear", align_corners=False)
    return logits[:, 0]


def stability_and_boxes(
    low_res: torch.Tensor,
    side: int,
    input_size: tuple[int, int],
    crop_hw: tuple[int, int],
    threshold: float,
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate's stability score and box, as ``calculate_stability_score`` and
    ``batched_mask_to_box`` give them from its upscaled logits, written as reductions
    over each row (pixels above threshold+offset and threshold-offset, the first and
    last column above threshold) and then over the rows' results. In that form
    ``torch.compile`` fuses the upscaling into one pass that reads the low-res logits
    and writes per-row counts ([N, H]): the full-size logits (3,072 x 1024 x 768
    float32 at 1,024 prompts, 9.7 GB, then read three times and thresholded twice)
    are never written. Eager, it costs more than the stock helpers (``CompiledScores``
    falls back to those)."""
    return row_scores(upscale_logits(low_res, side, input_size, crop_hw), threshold, offset)


def separable_stability_and_boxes(
    low_res: torch.Tensor,
    rows: tuple[torch.Tensor, ...],
    cols: tuple[torch.Tensor, ...],
    threshold: float,
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``stability_and_boxes`` of a photo larger than the canvas, upscaled through the
    composite resize's taps (``separable_resize``): the same numbers within float
    rounding, at a sixth of the cost on a CPU (12 MP)."""
    return row_scores(separable_upscale(low_res, rows, cols), threshold, offset)


def row_scores(logits: torch.Tensor, threshold: float, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Stability scores and boxes of [N, H, W] logits, as reductions over each row first."""
    height, width = logits.shape[-2:]
    cols = torch.arange(width, device=logits.device)
    above = logits > threshold
    high = (logits > threshold + offset).sum(-1, dtype=torch.int32)
    low = (logits > threshold - offset).sum(-1, dtype=torch.int32)
    first = torch.where(above, cols, width).amin(-1)
    last = torch.where(above, cols, -1).amax(-1)
    stability = high.sum(-1) / low.sum(-1)  # int32 / int32, as segment-anything divides
    rows = torch.arange(height, device=logits.device)
    filled = last >= 0
    top = torch.where(filled, rows, height).amin(-1)
    bottom = torch.where(filled, rows, -1).amax(-1)
    boxes = torch.stack([first.amin(-1), top, last.amax(-1), bottom], dim=-1)
    return stability, boxes * filled.any(-1, keepdim=True)  # an empty mask's box is zeros, as stock's


def eager_stability_and_boxes(low_res, side, input_size, crop_hw, threshold, offset):
    """The same numbers by segment-anything's helpers, over materialised logits."""
    logits = upscale_logits(low_res, side, input_size, crop_hw)
    return stability_score(logits, threshold, offset), batched_mask_to_box(logits > threshold)


def past_canvas(side: int, crop_hw: tuple[int, int]) -> bool:
    """Whether a crop is larger than the model's canvas: compiled scoring takes it through
    the composite resize (``separable_resize``), the eager numbers within float rounding;
    at or under the canvas, compiled scoring gives the eager bits but for a rare
    candidate a pixel apart (``candidate_scoring``)."""
    return max(crop_hw) > side


def _joined(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(stability scores, boxes) of groups of candidates, in one pair."""
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


REALIZE_OPS = 64  # CompiledScores' bound on the op count of a value inlined into its consumers
SCORE_GRAPHS = 16  # graphs CompiledScores keeps (torch's default is 8 a function); past them, eager
FALLBACK_PIXELS = 1 << 28  # full-size logit pixels the eager fallback materialises at a time (1 GB)
SEPARABLE_BYTES = 1 << 30  # what the rows resized first may take at once (photos past the canvas)


class CompiledScores:
    """``stability_and_boxes`` under ``torch.compile`` for one model canvas and thresholds,
    compiled when first called: one graph for any number of candidates, one for each
    class of photo shape (the upscaling's branches: landscape, portrait or square, at
    the canvas's size or resized again, rows or columns clamped), up to
    ``SCORE_GRAPHS``; a photo that would need more is scored eagerly, by the stock
    helpers, and said once. The canvas side and thresholds are constants of the
    compiled code (tested: symbolic ones, and inductor writes the full-size logits).
    Where compiling fails (no C compiler for Triton, an unsupported torch), it says so
    in one line and scores eagerly from then on: slower, the same results. Fewer than
    two candidates are scored eagerly, since torch specialises sizes 0 and 1. Eager
    scoring materialises ``FALLBACK_PIXELS`` at a time (batches are sized for the
    compiled path, which materialises none)."""

    def __init__(self, side: int, threshold: float, offset: float, backend: str = "inductor") -> None:
        self.side, self.threshold, self.offset = side, threshold, offset
        self.failed: str | None = None
        self.over_limit = 0  # calls scored eagerly because their shape would pass SCORE_GRAPHS

        canvas = float(side)  # an int from outside the code is symbolic; a float is specialised (below)

        def scores(low_res: torch.Tensor, input_size: tuple[int, int], crop_hw: tuple[int, int]):
            return stability_and_boxes(low_res, int(canvas), input_size, crop_hw, threshold, offset)

        # Inductor writes out a value read by several consumers once its code passes
        # an op count: 30 on a GPU, 50 on a CPU by default. The upscaled logits' code
        # lies between (at 30 a CPU writes them too, 9.7 GB a 1024-px photo); one
        # explicit bound makes the GPU's choice the one the CPU's tests read.
        # Every index these graphs gather by is in bounds by construction (the resize's
        # decomposition clamps its source rows and columns; ``axis_taps`` clamps its
        # taps), which inductor cannot prove: its check at every read cost 27% of the
        # fused pass at 1024x768 and 21% at 12 MP on this CPU, the same numbers without.
        unchecked: dict[str, Any] = {"assert_indirect_indexing": False}
        options: dict[str, Any] | None = (
            {"realize_opcount_threshold": REALIZE_OPS, **unchecked} if backend == "inductor" else None
        )
        self._compiled = torch.compile(scores, backend=backend, dynamic=True, options=options)

        def separable(low_res: torch.Tensor, rows: tuple, cols: tuple):
            return separable_stability_and_boxes(low_res, rows, cols, threshold, offset)

        separable_options = unchecked if backend == "inductor" else None
        self._separable = torch.compile(separable, backend=backend, dynamic=True, options=separable_options)
        _quiet_torch_about_our_recompile_limit()

    def __call__(self, low_res: torch.Tensor, input_size, crop_hw) -> tuple[torch.Tensor, torch.Tensor]:
        input_size, crop_hw = tuple(input_size), tuple(crop_hw)
        if self.failed is None and len(low_res) > 1:
            try:
                # Floats as constants: a symbolic threshold or side keeps inductor from
                # fusing the upscaling into the reductions (it writes the logits). Past
                # the graph limit torch would run the function uncompiled, silently, and
                # that form costs more than the stock helpers: it raises instead.
                with torch._dynamo.config.patch(
                    specialize_float=True, recompile_limit=SCORE_GRAPHS, fail_on_recompile_limit_hit=True
                ):
                    if past_canvas(self.side, crop_hw):
                        return self._separable_scores(low_res, input_size, crop_hw)
                    return self._compiled(low_res, input_size, crop_hw)
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                if not self.over_limit:
                    log.warning(
                        "SAM's candidate scoring has compiled for %d photo shapes; others are scored eagerly",
                        SCORE_GRAPHS,
                    )
                self.over_limit += 1
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager path gives the same numbers
                out_of_memory = out_of_memory_in(exc)
                if out_of_memory is not None:
                    raise out_of_memory from None  # the generator halves its prompt batch on this
                self.failed = f"{type(exc).__name__}: {first_line(exc)[:200]}"
                log.warning("compiling SAM's candidate scoring failed (%s); scoring eagerly, slower", self.failed)
        area = max(crop_hw[0] * crop_hw[1], self.side * self.side)
        step = max(1, FALLBACK_PIXELS // area)
        parts = [
            eager_stability_and_boxes(
                low_res[i : i + step], self.side, input_size, crop_hw, self.threshold, self.offset
            )
            for i in range(0, max(1, len(low_res)), step)
        ]
        return _joined(parts)

    def _separable_scores(self, low_res: torch.Tensor, input_size, crop_hw) -> tuple[torch.Tensor, torch.Tensor]:
        """``separable_stability_and_boxes`` compiled, in groups whose rows resized first
        fit ``SEPARABLE_BYTES``: as even as may be, none of one candidate (torch would
        compile size 1 apart)."""
        h, w = low_res.shape[-2:]
        rows = axis_taps(self.side, h, input_size[0], crop_hw[0], low_res.device)
        cols = axis_taps(self.side, w, input_size[1], crop_hw[1], low_res.device)
        per_group = max(2, SEPARABLE_BYTES // (4 * crop_hw[0] * w))
        groups = min(-(-len(low_res) // per_group), len(low_res) // 2)
        parts = [self._separable(part, rows, cols) for part in torch.tensor_split(low_res, groups)]
        return _joined(parts)


class _OurRecompileLimit(logging.Filter):
    """Drops torch's several-line warning at the graph limit, for this module's
    function alone: ``CompiledScores`` says it in one line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("recompile_limit" in str(record.msg) and __file__ in record.getMessage())


def _quiet_torch_about_our_recompile_limit() -> None:
    logger = logging.getLogger("torch._dynamo.convert_frame")
    if not any(isinstance(f, _OurRecompileLimit) for f in logger.filters):
        logger.addFilter(_OurRecompileLimit())


def remove_small_regions_each(masks: torch.Tensor, min_area: int) -> tuple[torch.Tensor, list[float]]:
    """segment-anything's clean-up (holes, then islands, with OpenCV) of each mask, on
    the host (connected components have no batched form), and per mask 1.0 where it
    changed nothing (NMS's score in the stock generator), else 0.0."""
    cleaned, flags = [], []
    for mask in masks.cpu().numpy():
        mask, holes = remove_small_regions(mask, min_area, mode="holes")
        mask, islands = remove_small_regions(mask, min_area, mode="islands")
        cleaned.append(mask)
        flags.append(float(not holes and not islands))
    return torch.from_numpy(np.stack(cleaned)) if cleaned else masks.cpu(), flags


def top_up(kept: torch.Tensor, scores: torch.Tensor, count: int | None) -> torch.Tensor:
    """NMS's survivors ``kept``; with ``count`` (``masks_per_photo``, benchmarks only),
    topped up (or cut) to that many with the best-scoring candidates NMS suppressed."""
    if count is None:
        return kept
    suppressed = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
    suppressed[kept] = False
    rest = torch.nonzero(suppressed).flatten()
    rest = rest[torch.argsort(scores[rest], descending=True, stable=True)]
    return torch.cat([kept, rest])[:count]
