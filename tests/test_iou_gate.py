"""The IoU filter's gate in SAM's decoder: a prompt none of whose used masks passes the
generator's ``pred_iou_thresh`` is not upscaled, the records stay the same, eager or
compiled, float32 or bf16."""

import copy

import numpy as np
import pytest
import torch

import usesearch
from usesearch.masks.sam import load_sam


@pytest.fixture(scope="module")
def iou_sam():
    """The tiny SAM as ``load_sam`` hands it out, its decoder's weights stirred (zero-
    initialised parts would give every prompt one IoU) and its predicted IoUs moved
    near 1 (the generator's filter applies only above 0)."""
    torch.manual_seed(0)
    sam = copy.deepcopy(load_sam(usesearch.get_preset("tiny").sam, "tiny"))
    for p in sam.mask_decoder.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    sam.mask_decoder.iou_prediction_head.layers[-1].bias.data += 1.0
    return sam


def decoder_inputs(sam, prompts: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    side = sam.image_encoder.img_size
    points = torch.rand(prompts, 1, 2, generator=generator) * side
    sparse, dense = sam.prompt_encoder(points=(points, torch.ones(prompts, 1)), boxes=None, masks=None)
    features = torch.randn(1, sam.prompt_encoder.embed_dim, side // 16, side // 16, generator=generator)
    return dict(
        image_embeddings=features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def test_prompts_the_iou_filter_drops_whole_are_not_upscaled_and_the_masks_stay_the_same(iou_sam, image):
    """The predicted IoUs come before the upscaling: a prompt none of whose used masks
    passes ``pred_iou_thresh`` is not upscaled (its masks are zeros, which the filter
    then drops), and every other output is the full decoder's; the generator's records
    are those of the decoder that upscales every prompt."""
    from tests.helpers import LOW
    from usesearch.masks.amg import SamMaskGenerator

    sam = iou_sam
    with torch.no_grad():
        args = decoder_inputs(sam, 40)
        for multimask in (True, False):
            masks, iou = sam.mask_decoder(**args, multimask_output=multimask)
            threshold = float(iou.amax(dim=1).median())
            gated, gated_iou = sam.mask_decoder(**args, multimask_output=multimask, upscale_above=threshold)
            kept = (iou > threshold).any(dim=1)
            assert 0 < kept.sum() < 40
            torch.testing.assert_close(gated_iou, iou, rtol=0, atol=0)
            torch.testing.assert_close(gated[kept], masks[kept], rtol=1e-5, atol=1e-5)
            assert not gated[~kept].any()

    keep_all = dict(points_per_side=8, box_nms_thresh=1.0)  # every candidate a record: all compared
    every = SamMaskGenerator(sam, **keep_all, **LOW).generate(image)
    best = {}  # each prompt's best mask: the median of them drops about half the prompts whole
    for record in every:
        best[record.point] = max(best.get(record.point, -np.inf), record.predicted_iou)
    threshold = float(np.median(list(best.values())))
    upscaled = []
    hook = sam.mask_decoder.output_upscaling[0].register_forward_hook(
        lambda module, args, out: upscaled.append(len(args[0]))
    )
    try:
        settings = dict(keep_all, pred_iou_thresh=threshold, stability_score_thresh=-10.0)
        gated_generator = SamMaskGenerator(sam, **settings)
        assert gated_generator._upscale_above == {"upscale_above": threshold}
        ours = gated_generator.generate(image)
        prompts = len(upscaled)
        ungated = SamMaskGenerator(sam, **settings)
        ungated._upscale_above = {}
        reference = ungated.generate(image)
    finally:
        hook.remove()
    assert 0 < sum(upscaled[:prompts]) < 64 == sum(upscaled[prompts:])  # 8x8 prompts, one batch
    assert len(ours) == len(reference) > 20
    for record, expected in zip(ours, reference):
        assert record.rle == expected.rle and record.box_xyxy == expected.box_xyxy
        assert record.predicted_iou == expected.predicted_iou
        assert record.stability_score == pytest.approx(expected.stability_score, abs=1e-6)
    assert SamMaskGenerator(sam, points_per_side=8, pred_iou_thresh=0.0)._upscale_above == {}  # no filter, no gate


def test_the_gate_compares_in_float32_as_the_filter_does_under_bf16(iou_sam):
    """Under bf16 autocast the IoUs are bfloat16; compared with the threshold in bf16,
    a threshold a quarter of a bf16 step below an IoU rounds up to it, and a prompt
    the generator's float32 filter keeps would lose its masks."""
    sam = iou_sam
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        args = decoder_inputs(sam, 40)
        _, iou = sam.mask_decoder(**args, multimask_output=True)
        assert iou.dtype == torch.bfloat16
        best = iou.amax(dim=1)
        value = best.median()
        below = torch.nextafter(value, torch.tensor(-np.inf, dtype=torch.bfloat16))
        threshold = float(value.float() - 0.25 * (value.float() - below.float()))
        assert float(torch.tensor(threshold, dtype=torch.bfloat16)) == float(value)  # bf16 would round it up
        masks, _ = sam.mask_decoder(**args, multimask_output=True, upscale_above=threshold)
    at_value = best == value
    assert at_value.any()
    assert masks[at_value].flatten(1).any(dim=1).all()  # kept: upscaled, as the filter keeps them


def test_the_same_decoder_called_eagerly_compiles_nothing_beside_a_compiled_one(iou_sam, monkeypatch):
    """A short GPU run, ``--no-compile`` and a failed compile's fallback call the eager
    decoder of a generator that built a ``CompiledDecoder``: the kept prompts'
    upscaling then compiled all the same (seconds of compiling), and where compiling
    fails (no Triton for the card) failed every photo. Only a compiled call compiles it."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from usesearch.masks import sam_compile
    from usesearch.masks.sam_compile import decoder_for

    monkeypatch.setattr(sam_compile, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    sam = iou_sam
    decoder = decoder_for(sam, compiled=True)
    with torch.no_grad():
        args = decoder_inputs(sam, 8, seed=3)
        _, iou = sam.mask_decoder(**args, multimask_output=True)
        threshold = float(iou.amax(dim=1).median())  # about half the prompts kept
        eager = sam.mask_decoder(**args, multimask_output=True, upscale_above=threshold)
        assert counters["stats"]["unique_graphs"] == 0  # the eager call compiled nothing
        compiled = decoder(**args, multimask_output=True, upscale_above=threshold)
        assert counters["stats"]["unique_graphs"] >= 2  # the decoder's graph, and the upscaling's
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_a_compiled_decoder_gates_without_compiling_again_for_each_count(iou_sam, monkeypatch):
    """The kept count is data: the gate runs outside the compiled graph and the kept
    prompts' upscaling is compiled for any count, so counts of 0, 1, some and all, at
    three batch sizes, compile a bounded number of graphs (each count and size was a
    new graph after the gate, up to torch's limit of 8) and give the eager outputs."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from usesearch.masks import sam_compile
    from usesearch.masks.sam_compile import decoder_for

    monkeypatch.setattr(sam_compile, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    sam = iou_sam
    decoder = decoder_for(sam, compiled=True)
    calls = 0
    with torch.no_grad():
        for prompts in (16, 12, 8):
            args = decoder_inputs(sam, prompts, seed=prompts)
            _, iou = sam.mask_decoder(**args, multimask_output=True)
            best = iou.amax(dim=1).sort().values
            for threshold in (best[-1] + 1, best[-2], best[prompts // 2], best[0] - 1):  # 0, 1, half, all kept
                expected = sam.mask_decoder(**args, multimask_output=True, upscale_above=float(threshold))
                got = decoder(**args, multimask_output=True, upscale_above=float(threshold))
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
                calls += 1
    assert calls == 12 and not decoder.failed
    assert counters["stats"]["unique_graphs"] <= 10
    torch._dynamo.reset()
