"""The levers of the GPU path in SAM's mask generator, checked on the CPU against what
they replace: SDPA attention in SAM's image encoder (segment-anything's product),
run-length coding on the masks' device (pycocotools' RLE), prompt batches sized to the
card, the benchmark's mask count (those of an index run: test_gpu_levers_index.py)."""

import copy
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling.image_encoder import Attention, Block
from segment_anything.modeling.transformer import Attention as DecoderAttention

from tests.helpers import LOW, mask_iou
from usesearch.masks import rle, sam_fast
from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.amg_utils import prompt_batch, upscale_to_input
from usesearch.masks.sam_fast import _sdpa_forward


def stock_sam(model):
    """A copy that runs segment-anything's own code again (encoder attention, decoder)."""
    model = copy.deepcopy(model)
    for module in model.image_encoder.modules():
        if isinstance(module, Attention) and "forward" in vars(module):
            del module.forward
    decoder = vars(model.mask_decoder)
    for name in ("predict_masks", "takes_upscale_above"):  # (no generator passes it the gate, then)
        decoder.pop(name, None)
    if getattr(decoder.get("forward"), "__func__", None) is sam_fast._forward:  # (not the blob SAM's wrapper)
        del decoder["forward"]
    for module in model.mask_decoder.modules():
        if isinstance(module, DecoderAttention):
            vars(module).pop("forward", None)
    return model


def test_relative_positions_indexed_on_their_device_are_the_librarys_rows():
    """The encoder's relative-position rows gathered by indices made where the table
    lies (the library's come from a CPU ``arange``: a blocking copy to a card in every
    attention block): the same rows, for a window, the global grid and a table of
    another length (resized by the library)."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    for size, length in ((14, 27), (64, 127), (64, 27)):
        table = torch.randn(length, 80)
        assert torch.equal(sam_fast._rel_pos(size, table), get_rel_pos(size, size, table))


@pytest.mark.parametrize("window", [0, 14], ids=["global-64x64", "windowed-padded"])
def test_sdpa_attention_gives_segment_anythings_block_output(window):
    torch.manual_seed(0)
    block = Block(
        dim=64, num_heads=4, use_rel_pos=True, window_size=window, input_size=(64, 64) if not window else (14, 14)
    ).eval()
    for p in (block.attn.rel_pos_h, block.attn.rel_pos_w):
        torch.nn.init.normal_(p, std=0.5)  # zero-initialised by default: make the bias matter
    fast = copy.deepcopy(block)
    fast.attn.forward = types.MethodType(_sdpa_forward, fast.attn)
    x = torch.randn(2, 64, 64, 64)
    with torch.no_grad():
        expected, got = block(x), fast(x)
    assert (expected - x).abs().max() > 0.1  # the block does something
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_load_sam_runs_both_levers_and_gives_the_stock_masks(sam, image):
    assert getattr(sam, "sdpa", False) and sum("forward" in vars(m) for m in sam.image_encoder.modules()) == 2
    assert "predict_masks" in vars(sam.mask_decoder)
    stock_model = stock_sam(sam)
    pixels = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(sam.image_encoder(pixels), stock_model.image_encoder(pixels), atol=1e-5, rtol=1e-5)
    stock = SamAutomaticMaskGenerator(stock_model, points_per_side=8, **LOW).generate(image)
    ours = SamMaskGenerator(sam, points_per_side=8, **LOW).generate(image)
    assert len(ours) == len(stock) > 20
    for record, reference in zip(ours, stock):
        assert mask_iou(rle.decode(record.rle), reference["segmentation"]) >= 0.99


@pytest.mark.parametrize(
    "input_size", [(768, 1024), (1024, 683), (1024, 1024), (1, 1024), (1023, 1021), (4, 5), (257, 300), (61, 1024)]
)
def test_upscaling_to_the_input_alone_gives_the_full_canvas_values(input_size):
    """The candidates' logits upscaled to the resized photo alone are the values of the
    whole 1024-px canvas cut to it, bit for bit (so no stability score or box moves)."""
    torch.manual_seed(0)
    low_res = torch.randn(3, 1, 256, 256)
    canvas = torch.nn.functional.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
    got = upscale_to_input(low_res, 1024, input_size)
    assert got.shape[-2:] == input_size
    assert torch.equal(got, canvas[..., : input_size[0], : input_size[1]])


def test_prompt_batches_are_sized_to_the_free_memory():
    h200, card_8gb = 130 * 2**30, 8 * 2**30
    assert prompt_batch(h200, 1024, (768, 1024), 1024) == 1024  # all of a 32x32 grid at once
    assert prompt_batch(card_8gb, 1024, (768, 1024), 1024) == 128
    assert prompt_batch(card_8gb, 1024, (3000, 4000), 1024) == 64  # a 12 MP photo's masks are larger
    assert prompt_batch(2**20, 1024, (768, 1024), 1024) == 64  # never below segment-anything's default
    for free in (2**30, 2**33, 2**37):
        assert prompt_batch(free, 1024, (768, 1024), 1024) % 64 == 0


def test_the_batch_size_changes_no_mask(sam, image):
    one = SamMaskGenerator(sam, points_per_side=8, points_per_batch=64, **LOW).generate(image)
    all_at_once = SamMaskGenerator(sam, points_per_side=8, points_per_batch=1024, **LOW).generate(image)
    assert [r.rle for r in one] == [r.rle for r in all_at_once] and len(one) > 20


def test_prompt_points_go_to_the_device_once_a_crop_shape(sam, image, monkeypatch):
    """A copy to the device a decoder batch, from pageable memory, waited for the GPU's
    work before it: the points are copied once a crop shape, and batches slice them."""
    monkeypatch.setattr("usesearch.masks.amg.GRIDS_KEPT", 2)
    generator = SamMaskGenerator(sam, points_per_side=8, points_per_batch=16, **LOW)
    real, given = generator._batch_candidates, []

    def noted(features, points, *args):
        given.append(points)
        return real(features, points, *args)

    generator._batch_candidates = noted
    masks = generator.generate(image)
    grid = generator._grids[(0, *image.shape[:2])]
    assert len(given) == 4 and all(
        points.untyped_storage().data_ptr() == grid.untyped_storage().data_ptr() for points in given
    )  # (slices of it: no copy)
    assert torch.equal(torch.cat(given), grid) and grid.dtype == torch.float64
    generator.generate(image)
    assert generator._grids[(0, *image.shape[:2])] is grid and [r.rle for r in generator.generate(image)] == [
        r.rle for r in masks
    ]
    for side in (40, 48):  # past GRIDS_KEPT, the oldest shape goes
        generator.generate(image[:side, :side])
    assert list(generator._grids) == [(0, 40, 40), (0, 48, 48)]


def test_a_prompt_batch_that_runs_out_of_gpu_memory_is_halved_for_good(sam, image, monkeypatch):
    """Sized once from the free memory; another process may take some later: the batch
    is halved until it fits (the same masks), not failed for every later photo."""
    monkeypatch.setattr("usesearch.masks.amg.CPU_POINTS_PER_BATCH", 64)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    generator = SamMaskGenerator(sam, points_per_side=8, **LOW)
    real, sizes = generator._batch_candidates, []

    def short_of_memory(features, points, *args):
        sizes.append(len(points))
        if len(points) > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(features, points, *args)

    generator._batch_candidates = short_of_memory
    masks = generator.generate(image)
    assert sizes[:3] == [64, 32, 16] and set(sizes[2:]) == {16}
    fitting = SamMaskGenerator(sam, points_per_side=8, points_per_batch=16, **LOW).generate(image)
    assert [r.rle for r in masks] == [r.rle for r in fitting] and len(masks) > 20
    sizes.clear()
    generator.generate(image)
    assert set(sizes) == {16}  # remembered: the next photo does not run out first


def test_masks_encoded_at_once_that_run_out_of_gpu_memory_are_halved_for_good(sam, image, monkeypatch):
    """The kept masks are encoded as many at a time as a fixed pixel budget allows; an
    out-of-memory error there failed the photo, and every later one, where the prompt
    batch is halved until it fits. Now the same: halved, the same masks, remembered."""
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr("usesearch.masks.amg.cpu_encode_chunk", lambda size, chunk: 64)
    generator = SamMaskGenerator(sam, points_per_side=8, **LOW)
    real, sizes = generator._masks, []

    def short_of_memory(cands, *args):
        sizes.append(len(cands))
        if len(cands) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(cands, *args)

    expected = SamMaskGenerator(sam, points_per_side=8, **LOW).generate(image)
    generator._masks = short_of_memory
    masks = generator.generate(image)
    assert [r.rle for r in masks] == [r.rle for r in expected] and len(masks) > 20
    first_fit = next(i for i, n in enumerate(sizes) if n <= 8)
    assert sizes[0] > 8 and max(sizes[first_fit:]) <= 8  # halved until it fit, then kept
    sizes.clear()
    generator.generate(image)
    assert sizes and max(sizes) <= 8  # remembered: the next photo does not run out first


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 23), st.integers(1, 19), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_run_length_coding_on_the_device_equals_pycocotools(n, h, w, density, seed):
    masks = np.random.default_rng(seed).random((n, h, w)) < density
    masks[0, 0, 0], masks[-1, -1, -1] = True, False  # a run at each end of the pixel order
    assert rle.encode_runs(torch.from_numpy(masks)) == rle.encode_stack(masks)


def test_run_length_coding_edge_cases():
    masks = np.zeros((4, 7, 5), bool)
    masks[1] = True
    masks[2, 3, 2] = True
    masks[3, :, 4] = True  # the last column: the last run reaches the end
    assert rle.encode_runs(torch.from_numpy(masks)) == rle.encode_stack(masks)
    assert [rle.area(r) for r in rle.encode_runs(torch.from_numpy(masks))] == [0, 35, 1, 7]


def test_masks_per_photo_keeps_that_many_with_nms_survivors_first(sam, image):
    kept = SamMaskGenerator(sam, points_per_side=8, **LOW).generate(image)
    topped = SamMaskGenerator(sam, points_per_side=8, masks_per_photo=len(kept) + 30, **LOW).generate(image)
    assert len(topped) == len(kept) + 30
    assert {r.rle["counts"] for r in kept} <= {r.rle["counts"] for r in topped}
    cut = SamMaskGenerator(sam, points_per_side=8, masks_per_photo=5, **LOW).generate(image)
    assert len(cut) == 5 and {r.rle["counts"] for r in cut} <= {r.rle["counts"] for r in kept}


def throughput_benchmark():
    """``benchmarks/index_throughput.py`` as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "index_throughput.py"
    spec = importlib.util.spec_from_file_location("index_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_benchmarks_blob_masks_are_few_runs_and_never_empty_on_the_photo():
    """``index_throughput.py --mask-shape blobs``: random weights' specks become a few
    blobs (runs as real masks have), each with a pixel on the photo's part of SAM's
    canvas, in the decoder's own shape and dtype."""
    bench = throughput_benchmark()
    torch.manual_seed(0)
    specks = torch.randn(4, 3, 256, 256, dtype=torch.bfloat16)
    blobs = bench.blob_logits(specks, valid=(0.75, 1.0))
    assert blobs.shape == specks.shape and blobs.dtype == specks.dtype
    on_photo = blobs[:, :, :192, :] > 0
    assert on_photo.flatten(2).any(-1).all()  # no mask empty on the photo

    def runs(masks):
        flat = masks.flatten(0, 1).transpose(1, 2).flatten(1)
        return (flat[:, 1:] != flat[:, :-1]).sum(1).float().median()

    assert runs(specks > 0) > 50 * runs(blobs > 0)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_benchmarks_blobs_shape_every_decoder_path_with_the_iou_gate_on(sam, image, compiled, monkeypatch):
    """With the IoU gate on (a threshold above 0), a compiled decoder upscales the kept
    prompts through the name ``sam_compile`` imported: patched only in ``sam_fast``, the
    blobs never reached it and a random-weight run kept its specks."""
    from usesearch.masks import sam_compile

    bench = throughput_benchmark()
    monkeypatch.setattr(sam_compile, "COMPILE_BACKEND", "eager")  # (the path's logic, not the compiler)
    shaped = []
    blob_logits = bench.blob_logits
    monkeypatch.setattr(
        bench, "blob_logits", lambda masks, valid: shaped.append(len(masks)) or blob_logits(masks, valid)
    )
    with bench.blob_decoder():
        SamMaskGenerator(
            sam, points_per_side=4, compiled_decoder=compiled, compiled_scores=False, **{**LOW, "pred_iou_thresh": 1e-4}
        ).generate(image)
    assert shaped and sum(shaped) > 0
