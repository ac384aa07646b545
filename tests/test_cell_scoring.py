"""Candidates scored by cells (``cell_scoring``): only the pixels a threshold passes
near are upscaled; the numbers are segment-anything's helpers' over the upscaled logits."""

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.transforms import ResizeLongestSide

from tests.helpers import LOW
from tests.test_compiled_scores import PHOTOS, SIDE, blob_logits, shapes
from usesearch.masks import candidate_scoring, cell_grid, cell_scoring, separable_resize
from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.amg_utils import eager_stability_and_boxes, past_canvas, upscale_logits
from usesearch.masks.candidate_scoring import CandidateScoring

CPU = torch.device("cpu")


def scoring() -> CandidateScoring:
    return CandidateScoring(SIDE, 0.0, 1.0, CPU, compiled=False)


def assert_as_stock(low_res, photo_hw, side=SIDE, threshold=0.0, offset=1.0):
    """Cells give segment-anything's numbers: at the canvas bit for bit (a candidate
    with a pixel about a level, where cells' arithmetic and the library's kernel may
    round to either side, is scored by the dense pass); past it or below it (two
    resizes) within float rounding, as the compiled pass; the same boxes."""
    input_size = ResizeLongestSide.get_preprocess_shape(*photo_hw, side)
    scoring = CandidateScoring(side, threshold, offset, CPU, compiled=False)
    by_cells = scoring.by_cells(low_res, input_size, photo_hw)
    assert by_cells is not None  # scored by cells, not handed to the dense pass
    stability, boxes = by_cells
    stock_stability, stock_boxes = eager_stability_and_boxes(low_res, side, input_size, photo_hw, threshold, offset)
    assert torch.equal(boxes, stock_boxes), photo_hw
    gap = 0.0 if tuple(input_size) == tuple(photo_hw) else 1e-5
    torch.testing.assert_close(stability, stock_stability, rtol=0, atol=gap, equal_nan=True)


@pytest.mark.parametrize("photo_hw", [*PHOTOS, (3000, 4000)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_cells_give_segment_anythings_stability_scores_and_boxes(photo_hw):
    assert_as_stock(blob_logits(12 if photo_hw[0] < 3000 else 4), photo_hw)


def test_logits_at_a_threshold_exactly_and_sharp_edges_are_counted_as_stock(monkeypatch):
    """Cells that lie on a threshold, or whose block straddles a step, are upscaled pixel
    by pixel: a value equal to a threshold is not above it, as stock counts. (Whole
    candidates on a threshold cross every cell: scored by cells all the same here.)"""
    monkeypatch.setattr(cell_scoring, "CROSSED_SHARE", 1.0)
    low = torch.full((8, 1, 256, 256), -20.0)
    low[0] = 0.0  # the box's threshold itself: no pixel above it
    low[1] = 1.0  # threshold + offset: above the box's threshold, not the intersection's
    low[2] = -1.0  # threshold - offset: in no union
    low[3, :, :, 100:] = 5.0  # a step between two low-res columns
    low[4, :, 50, 60] = 9.0  # one low-res logit: a few pixels
    low[5, :, 10:200, 30:40] = 0.0  # a band at the threshold, beside the background
    low[6, :, 10:200, 30:40] = 1.0 + 1e-6  # just above threshold + offset
    low[7, :, :, 100:140] = torch.linspace(-3, 3, 40)  # a ramp: every cell of it crosses a threshold
    for photo_hw in ((768, 1024), (1500, 2000)):
        assert_as_stock(low, photo_hw)


def test_noisy_logits_give_way_to_the_dense_pass(monkeypatch):
    """Where a threshold crosses many cells, upscaling them by cells would cost more than
    the dense pass: ``CandidateScoring`` scores the group densely, the same numbers."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 1, 256, 256, generator=generator)
    input_size, crop_hw = shapes((768, 1024))
    assert scoring().by_cells(noise, input_size, crop_hw) is None
    assert scoring().by_cells(torch.full_like(noise, float("nan")), input_size, crop_hw) is None  # (NaN: stock's words)
    dense = []
    real = candidate_scoring.upscale_logits
    monkeypatch.setattr(candidate_scoring, "upscale_logits", lambda *args: dense.append(1) or real(*args))
    kept, stability, boxes = scoring()(noise, input_size, crop_hw, 0.0)
    assert dense and kept is None
    stock_stability, stock_boxes = eager_stability_and_boxes(noise, SIDE, input_size, crop_hw, 0.0, 1.0)
    assert torch.equal(boxes, stock_boxes) and torch.equal(stability.nan_to_num(-1), stock_stability.nan_to_num(-1))


def test_the_dense_pass_in_groups_keeps_the_candidates_of_the_whole_batch(monkeypatch):
    """Segment-anything's stability filter applied by the dense pass a group at a time (a
    large photo's on a CPU): the kept candidates' indices are the whole batch's, in
    order, with their scores and boxes, as in one pass."""
    low = blob_logits(12)
    input_size, crop_hw = shapes((768, 1024))
    _, every, _ = scoring()._dense(low, input_size, crop_hw)
    level = float(every.nan_to_num(0).median())
    whole = scoring()._dense(low, input_size, crop_hw, keep_above=level)
    monkeypatch.setattr(candidate_scoring, "cpu_upscale_chunk", lambda side, hw: 5)
    grouped = scoring()._dense(low, input_size, crop_hw, keep_above=level)
    assert 0 < len(whole[0]) < len(low) and torch.equal(whole[0], torch.nonzero(every >= level)[:, 0])
    assert all(torch.equal(a, b) for a, b in zip(grouped, whole))


def test_cells_in_groups_give_the_scores_of_one_group(monkeypatch):
    """``by_cells`` a few candidates at a time (a CPU's, and a GPU's for a photo of many
    megapixels) gives what one group gives; a GPU scores a canvas-sized photo's 3,072
    candidates (32x32 prompts, 3 masks each) in one group."""
    low = blob_logits(12)
    input_size, crop_hw = shapes((768, 1024))
    monkeypatch.setattr(candidate_scoring, "CELL_PIXELS", 1 << 40)
    whole = scoring().by_cells(low, input_size, crop_hw)
    monkeypatch.setattr(candidate_scoring, "CELL_PIXELS", 5 * crop_hw[0] * crop_hw[1])
    calls = []
    real = cell_scoring.cell_scores
    monkeypatch.setattr(candidate_scoring, "cell_scores", lambda group, *a: calls.append(len(group)) or real(group, *a))
    grouped = scoring().by_cells(low, input_size, crop_hw)
    assert calls == [5, 5, 2]
    assert whole is not None and grouped is not None
    for a, b in zip(grouped, whole, strict=True):  # (a candidate with no pixel above scores NaN, as stock's)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert candidate_scoring.GPU_CELL_PIXELS // (768 * 1024) >= 3072
    assert candidate_scoring.GPU_CELL_PIXELS // (3000 * 4000) < 3072


def test_bfloat16_logits_are_scored_as_their_float32_values():
    """Under a GPU's autocast the decoder may hand bfloat16 logits: cells' exactness is
    float32's (their upscaled values in bfloat16 drift from the library's by up to
    6.6e-4 in stability, a review found), so the scoring takes their float32 values."""
    low = blob_logits(12).bfloat16()
    input_size, crop_hw = shapes((768, 1024))
    _, stability, boxes = scoring()(low, input_size, crop_hw, 0.0)
    stock_stability, stock_boxes = eager_stability_and_boxes(low.float(), SIDE, input_size, crop_hw, 0.0, 1.0)
    assert stability.dtype == torch.float32 and torch.equal(boxes, stock_boxes)
    torch.testing.assert_close(stability, stock_stability, rtol=0, atol=0, equal_nan=True)  # (the empty one: 0/0)


def edge_logits(side: int, photo_hw, tiny: float = -3.3172):
    """Two candidates' low-res logits with a steep edge (from ``tiny`` to 7.9 and to 56.9)
    between two low-res columns, and the library's own values of pixels along it."""
    low_side = side // 4
    low = torch.full((2, 1, low_side, low_side), -20.0)
    column = low_side // 3
    low[:, 0, :, column], low[:, 0, :, column + 1] = tiny, 7.91234
    low[1, 0, :, column + 1] = 56.923561096191406
    input_size = ResizeLongestSide.get_preprocess_shape(*photo_hw, side)
    edge = upscale_logits(low, side, input_size, photo_hw)[:, 10]
    ramp = edge[(edge > 0.1) & (edge < 7.9)].unique()
    assert len(ramp) >= 3
    return low, ramp[:: max(1, len(ramp) // 4)].tolist()


def dense_calls(monkeypatch) -> list[int]:
    """The candidates each call of the dense pass scores (cells' doubted ones)."""
    calls: list[int] = []
    dense = CandidateScoring._dense
    monkeypatch.setattr(
        CandidateScoring, "_dense", lambda self, low, *a: calls.append(len(low)) or dense(self, low, *a)
    )
    return calls


@pytest.mark.parametrize("side, photo_hw", [(SIDE, (768, 1024)), (SIDE, (1024, 683)), (256, (192, 256))])
def test_a_threshold_on_a_pixel_where_roundings_differ_is_counted_as_stock(side, photo_hw, monkeypatch):
    """Inductor's arithmetic, which cells use, and ``F.interpolate``'s kernel round about
    half the pixels of a steep edge differently (an ulp or two): with a threshold equal
    to such a pixel's value, a candidate would count it on the other side (a review
    found stability 0.857 against 1.0, and boxes a column apart). Thresholds here are
    the library's own values of pixels along an edge, on both canvases: the pixels
    about them are computed again as the CPU kernel rounds, and no candidate is left
    to the dense pass. (Past the canvas cells, as the compiled pass, may differ there
    by a pixel: the README's documented rounding.)"""
    monkeypatch.setattr(cell_scoring, "CROSSED_SHARE", 1.0)
    settled = []
    as_aten = cell_scoring._as_aten
    monkeypatch.setattr(cell_scoring, "_as_aten", lambda *args: settled.append(1) or as_aten(*args))
    dense = dense_calls(monkeypatch)
    low, thresholds = edge_logits(side, photo_hw)
    for threshold in thresholds:
        assert_as_stock(low, photo_hw, side, threshold, 0.5)
    assert settled and not dense


def test_this_cpus_kernel_rounds_as_cells_compute_it_again():
    """On x86's AVX2 and AVX-512 builds ATen's bilinear kernel is an fma along each row,
    then across: cells reproduce it (else every candidate with a pixel about a level
    would go to the dense pass: the same numbers, at ~2x the time)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("a kernel built otherwise may round otherwise: cells then doubt, as on a GPU")
    assert separable_resize.kernel_fuses(CPU)


def test_where_the_kernel_rounds_otherwise_candidates_about_a_level_are_doubted(monkeypatch):
    """A kernel whose rounding cells do not reproduce (a GPU's): a candidate with a pixel
    about a level is scored by the dense pass, the library's numbers all the same."""
    monkeypatch.setattr(cell_scoring, "CROSSED_SHARE", 1.0)
    monkeypatch.setattr(cell_scoring, "kernel_fuses", lambda device: False)
    dense = dense_calls(monkeypatch)
    low, thresholds = edge_logits(SIDE, (768, 1024))
    for threshold in thresholds:
        assert_as_stock(low, (768, 1024), SIDE, threshold, 0.5)
    assert dense and sum(dense) <= 2 * len(thresholds)


def test_a_block_spanning_many_binades_is_doubted(monkeypatch):
    """Beside a logit of 1e-30, float64 sums of the kernel's products are not exact (its
    fma's rounding not reproduced: the values of such a block differ from the kernel's
    in ~5% of pixels): a candidate with a pixel about a level there is doubted."""
    monkeypatch.setattr(cell_scoring, "CROSSED_SHARE", 1.0)
    dense = dense_calls(monkeypatch)
    low, thresholds = edge_logits(SIDE, (768, 1024), tiny=1e-30)
    for threshold in thresholds:
        assert_as_stock(low, (768, 1024), SIDE, threshold, 0.5)
    assert dense


@pytest.mark.parametrize("photo_hw", [(768, 1024), (1024, 683), (1500, 2000), (333, 500)], ids=str)
def test_torchs_own_operations_as_on_a_gpu_give_the_same_numbers(photo_hw, monkeypatch):
    """The code a GPU runs (torch's operations throughout, ``NUMPY`` off), here on a CPU;
    at the canvas, with a threshold on an edge's pixel too."""
    monkeypatch.setattr(cell_scoring, "NUMPY", False)
    assert_as_stock(blob_logits(12), photo_hw)
    if not past_canvas(SIDE, photo_hw) and min(photo_hw) > 600:
        monkeypatch.setattr(cell_scoring, "CROSSED_SHARE", 1.0)
        low, thresholds = edge_logits(SIDE, photo_hw)
        assert_as_stock(low, photo_hw, SIDE, thresholds[1], 0.5)


@pytest.mark.parametrize("photo_hw", [(1024, 1), (2, 1024)], ids=str)
def test_a_photo_a_pixel_or_two_across_at_the_canvas_is_counted_as_stock(photo_hw, monkeypatch):
    """A photo at the canvas one or two pixels across reads one low-res row a pixel along
    that axis: cells give it a second tap of weight 0, as ATen's kernel, so the photo
    takes the one resize's arithmetic and its pixels about a level are settled as the
    kernel rounds (a review found such photos summed as two resizes, unfused and
    unsettled: a box a row apart, stability 0.994 against 1.0). The intersection's level
    here is the library's value of a pixel that sum rounds above it."""
    monkeypatch.setattr(cell_scoring, "CROSSED_SHARE", 1.0)
    low = torch.randn(4, 1, 256, 256, generator=torch.Generator().manual_seed(0)) * 10
    stock = upscale_logits(low, SIDE, photo_hw, photo_hw)
    taps = (separable_resize.axis_taps(SIDE, 256, n, n, CPU) for n in photo_hw)
    unfused = separable_resize.separable_upscale(low, *taps)
    thresholds = stock[unfused > stock].unique()
    assert len(thresholds) >= 4
    for level in thresholds[:4].tolist():
        assert_as_stock(low, photo_hw, SIDE, level - 0.5, 0.5)  # (threshold + offset: the level itself)


@pytest.mark.parametrize("side", [SIDE, 256])
def test_odd_photo_shapes_are_scored_as_stock_or_given_to_the_dense_pass(side):
    """Slivers, single pixels, photos just past the canvas and far below it, on SAM's
    canvas and the tiny SAM's: cells give stock's numbers wherever they score."""
    low = blob_logits(6) if side == SIDE else torch.nn.functional.interpolate(blob_logits(6), (64, 64))
    scored = 0
    for photo_hw in ((1, 1), (2, 1000), (1000, 2), (20, 30), (257, 300), (1025, 1025), (99, 1500), (1024, 1)):
        input_size = ResizeLongestSide.get_preprocess_shape(*photo_hw, side)
        by_cells = CandidateScoring(side, 0.0, 1.0, CPU, compiled=False).by_cells(low, input_size, photo_hw)
        if by_cells is None:
            continue
        scored += 1
        stability, boxes = eager_stability_and_boxes(low, side, input_size, photo_hw, 0.0, 1.0)
        assert torch.equal(by_cells[1], boxes), photo_hw
        gap = 0.0 if tuple(input_size) == tuple(photo_hw) else 1e-5
        torch.testing.assert_close(by_cells[0], stability, rtol=0, atol=gap, equal_nan=True)
    assert scored >= 6


@pytest.mark.parametrize("photo", ["coffee", "astronaut"])
def test_the_generator_scores_by_cells_and_gives_stocks_masks(sam, photo, monkeypatch):
    """SAM's candidates on a CPU are scored by cells (the dense pass runs only for the
    few candidates cells doubt, never for a whole group), and the masks, scores and
    boxes are segment-anything's generator's."""
    from skimage import data

    image = np.ascontiguousarray(getattr(data, photo)()[::2, ::2])  # coffee past tiny SAM's canvas, astronaut at it
    settings = dict(points_per_side=8, **LOW)
    stock = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    by_cells, dense = CandidateScoring.by_cells, CandidateScoring._dense
    scored, doubted, inside = [], [], []

    def counted_cells(self, low_res, *args):
        scored.append(len(low_res))
        inside.append(True)
        try:
            return by_cells(self, low_res, *args)
        finally:
            inside.pop()

    def doubted_only(self, low_res, *args):
        if not inside:  # the dense pass for a whole group, not cells' doubted candidates
            raise AssertionError("the dense pass ran")
        doubted.append(len(low_res))
        return dense(self, low_res, *args)

    monkeypatch.setattr(CandidateScoring, "by_cells", counted_cells)
    monkeypatch.setattr(CandidateScoring, "_dense", doubted_only)
    ours = SamMaskGenerator(sam, compiled_scores=False, **settings).generate(image)
    assert sum(scored) > 0 and sum(doubted) < sum(scored) / 4
    assert len(stock) > 20 and len(ours) == len(stock)
    assert sorted(r.box_xyxy for r in ours) == sorted(
        (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]) for a in stock
    )
    assert sorted(round(r.stability_score, 5) for r in ours) == sorted(round(a["stability_score"], 5) for a in stock)


@pytest.mark.parametrize("photo_hw", [(768, 1024), (1024, 683), (1500, 2000), (3000, 4000)])
def test_runs_tile_each_axis_and_every_pixel_reads_its_runs_block(photo_hw):
    for input_len, out_len in zip(*shapes(photo_hw)):
        axis = cell_grid.axis_cells(SIDE, 256, input_len, out_len, CPU)
        assert int(axis.first[0]) == 0 and torch.equal(axis.first[1:], (axis.first + axis.length)[:-1])
        assert int(axis.first[-1] + axis.length[-1]) == out_len
        run = torch.repeat_interleave(torch.arange(len(axis.first)), axis.length)
        assert torch.equal(axis.index[:, 0], axis.start[run])  # a run's pixels read the same low-res rows
        assert (axis.weight >= 0).all()  # non-negative: a pixel lies between its block's least and greatest
        if past_canvas(SIDE, photo_hw):  # the usual run: the photo's pixels a low-res row
            assert abs(axis.piece - out_len / len(axis.first)) <= 1
        else:
            assert axis.piece == SIDE // 256
