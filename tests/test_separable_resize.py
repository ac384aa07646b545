"""A photo larger than SAM's canvas: its candidates' logits resized twice (to the canvas,
then to the photo) as one separable resize through composite taps
(``separable_resize``), compiled in ``CompiledScores``: segment-anything's values and
numbers within float rounding, in groups that bound the rows resized first."""

import pytest
import torch

from tests.test_compiled_scores import SIDE, blob_logits, shapes
from usesearch.masks import amg_utils
from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.amg_utils import CompiledScores, eager_stability_and_boxes, upscale_logits
from usesearch.masks.separable_resize import axis_taps, separable_upscale

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("side", "photo_hw"),
    [(SIDE, (1500, 2000)), (SIDE, (2000, 1500)), (SIDE, (1025, 1100)), (SIDE, (3000, 4000)), (256, (400, 600))],
    ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v),
)
def test_the_composite_taps_give_segment_anythings_two_resizes(side, photo_hw):
    low_res = blob_logits(3)
    if side != SIDE:  # the tiny SAM's canvas: 64x64 low-res logits
        low_res = torch.nn.functional.interpolate(low_res, (side // 4, side // 4), mode="bilinear")
    input_size = shapes(photo_hw)[0] if side == SIDE else (side * photo_hw[0] // photo_hw[1], side)
    rows, cols = (axis_taps(side, low_res.shape[-1], n, m, CPU) for n, m in zip(input_size, photo_hw))
    for index, weight in (rows, cols):
        assert index.shape[1] == 3  # an upscaled row reads three low-res rows at most
        assert index.min() >= 0 and index.max() < low_res.shape[-1]
        torch.testing.assert_close(weight.sum(1), torch.ones(len(weight)), rtol=0, atol=1e-6)
    expected = upscale_logits(low_res, side, input_size, photo_hw)
    upscaled = separable_upscale(low_res, rows, cols)
    assert upscaled.shape == expected.shape == (3, *photo_hw)
    torch.testing.assert_close(upscaled, expected, rtol=1e-6, atol=1e-5)  # float rounding: a few ulps


def test_large_photos_are_scored_in_groups_of_two_or_more_with_the_same_numbers(monkeypatch):
    low_res = blob_logits(7)
    input_size, crop_hw = shapes((1500, 2000))
    whole = CompiledScores(SIDE, 0.0, 1.0)(low_res, input_size, crop_hw)
    monkeypatch.setattr(amg_utils, "SEPARABLE_BYTES", 2 * 4 * crop_hw[0] * low_res.shape[-1])  # two candidates' rows
    scores = CompiledScores(SIDE, 0.0, 1.0)
    sizes = []
    compiled = scores._separable
    scores._separable = lambda part, *taps: sizes.append(len(part)) or compiled(part, *taps)
    stability, boxes = scores(low_res, input_size, crop_hw)
    assert sizes == [3, 2, 2] and scores.failed is None  # none of one candidate, which torch compiles apart
    assert torch.equal(stability.nan_to_num(-1.0), whole[0].nan_to_num(-1.0)) and torch.equal(boxes, whole[1])
    eager_stability, eager_boxes = eager_stability_and_boxes(low_res, SIDE, input_size, crop_hw, 0.0, 1.0)
    assert (boxes - eager_boxes).abs().max() <= 1
    torch.testing.assert_close(stability.nan_to_num(-1.0), eager_stability.nan_to_num(-1.0), rtol=0, atol=1e-5)


def test_the_generator_on_a_photo_larger_than_the_canvas_keeps_segment_anythings_masks(sam):
    from skimage import data

    image = data.coffee()  # 400 x 600: past the tiny SAM's 256-px canvas, so resized twice
    settings = dict(points_per_side=8, pred_iou_thresh=-10.0, stability_score_thresh=0.6)
    eager = SamMaskGenerator(sam, compiled_scores=False, **settings).generate(image)
    generator = SamMaskGenerator(sam, compiled_scores=True, **settings)
    compiled = generator.generate(image)
    assert generator.scoring.compiled is not None and generator.scoring.compiled.failed is None
    assert len(eager) > 10 and [r.rle for r in compiled] == [r.rle for r in eager]
    for ours, stock in zip(compiled, eager, strict=True):
        assert ours.predicted_iou == stock.predicted_iou
        assert abs(ours.stability_score - stock.stability_score) < 1e-4  # a pixel of ~30,000 counted otherwise
        assert max(abs(a - b) for a, b in zip(ours.box_xyxy, stock.box_xyxy)) <= 1


def _dense_taps(side, low, input_len, out_len):
    """The taps as first computed: both resizes of an identity as dense matrices,
    multiplied in float64 (what ``_axis_taps`` replaced: ~0.1-0.2 s a new shape)."""
    from usesearch.masks.separable_resize import _resize_matrix

    composite = _resize_matrix(input_len, out_len).double() @ _resize_matrix(low, side)[:input_len].double()
    nonzero = composite != 0
    start = nonzero.float().argmax(1)
    indices = (start[:, None] + torch.arange(int(nonzero.sum(1).max()))[None]).clamp(max=low - 1)
    weights = torch.gather(composite, 1, indices)
    weights[:, 1:][indices[:, 1:] == indices[:, :-1]] = 0.0
    return indices, weights.float()


@pytest.mark.parametrize(("side", "low"), [(1024, 256), (1008, 252), (64, 16)])
def test_the_probed_taps_are_the_dense_matrices_product_bit_for_bit(side, low):
    from usesearch.masks.separable_resize import _axis_taps

    generator = torch.Generator().manual_seed(side)
    lengths = {1, 2, 3, 17, side * 3 // 4, side - 1, side, int(torch.randint(1, side, (1,), generator=generator))}
    checked = 0
    for input_len in sorted(lengths):
        for out_len in sorted({input_len, input_len + 1, 2 * input_len + 3, 3000, 4032, 5472}):
            if out_len >= input_len:
                probed, dense = _axis_taps(side, low, input_len, out_len), _dense_taps(side, low, input_len, out_len)
                assert torch.equal(probed[0], dense[0]) and torch.equal(probed[1], dense[1]), (input_len, out_len)
                checked += 1
    assert checked >= 40
