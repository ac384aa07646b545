"""SAM's mask decoder as ``load_sam`` hands it out, against segment-anything's: the
image tokens shared across prompts until they differ, every projection applied to
the prompts' few tokens rather than to each prompt's copy of the image tokens, every
attention over the image tokens fused; and the same code on the meta device, where
``benchmarks/stage_floor.py`` counts its FLOPs and bytes."""

import copy

import pytest
import torch
from segment_anything.modeling.transformer import Attention as DecoderAttention
from torch.utils._python_dispatch import TorchDispatchMode

from usesearch.masks import sam_fast
from usesearch.masks.sam import build_sam
from usesearch.masks.sam_fast import share_image_tokens
from usesearch.masks.sam_prompts import embed_points_in_queue

UPSCALINGS = pytest.mark.parametrize("pixelwise_on", [set(), {"cpu"}], ids=["convolutions", "pixelwise"])


@pytest.mark.parametrize("arch", ["tiny", "vit_b"])
def test_the_decoder_with_shared_image_tokens_gives_segment_anythings_outputs(arch):
    torch.manual_seed(0)
    stock = build_sam(arch).eval()
    for p in stock.mask_decoder.parameters():  # zero-initialised parts would hide a wrong path
        p.data.add_(0.02 * torch.randn_like(p))
    fast = share_image_tokens(copy.deepcopy(stock))
    on_sdpa = [m for m in fast.mask_decoder.modules() if isinstance(m, DecoderAttention) and "forward" in vars(m)]
    assert len(on_sdpa) == 7  # every attention of the decoder (2 layers x 3, and the last)
    side = stock.image_encoder.img_size
    grid = side // 16
    features = torch.randn(1, stock.prompt_encoder.embed_dim, grid, grid)
    points = torch.rand(9, 1, 2) * side
    projected = []  # the rows each projection of the decoder's transformer is applied to, a call at a time
    for module in fast.mask_decoder.transformer.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda module, args, out: projected.append(args[0].shape[:-1].numel()))
    with torch.no_grad():
        for boxes in (None, torch.tensor([[10.0, 20.0, 120.0, 200.0]]).repeat(9, 1)):
            sparse, dense = stock.prompt_encoder(
                points=(points, torch.ones(9, 1, dtype=torch.int)), boxes=boxes, masks=None
            )
            args = dict(
                image_embeddings=features,
                image_pe=stock.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            expected, got = stock.mask_decoder(**args), fast.mask_decoder(**args)
            torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)
        # A mask prompt makes each prompt's image tokens differ: segment-anything's path.
        mask_in = torch.randn(9, 1, 4 * grid, 4 * grid)
        sparse, dense = stock.prompt_encoder(
            points=(points, torch.ones(9, 1, dtype=torch.int)), boxes=None, masks=mask_in
        )
        args.update(sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        points_only = len(projected)
        torch.testing.assert_close(fast.mask_decoder(**args)[0], stock.mask_decoder(**args)[0], atol=1e-5, rtol=1e-5)
    # With point prompts no projection meets the image tokens (grid x grid of them,
    # once per prompt in segment-anything): each prompt's few tokens carry them.
    assert points_only > 40 and max(projected[:points_only]) == 9 * 8  # 5 output tokens, a point, a box
    assert max(projected[points_only:]) == 9 * grid * grid  # a mask prompt: segment-anything's path


@UPSCALINGS
def test_the_upscaling_gives_segment_anythings_mask_logits_either_way(pixelwise_on, monkeypatch):
    """The decoder's upscaling as transposed convolutions (a CPU's) or as per-pixel
    products (``sam_fast.mask_logits`` on a GPU), each within float rounding of
    segment-anything's; the products run no convolution at all."""
    monkeypatch.setattr(sam_fast, "PIXELWISE_ON", pixelwise_on)
    torch.manual_seed(1)
    stock = build_sam("vit_b").eval()
    for p in stock.mask_decoder.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    fast = share_image_tokens(copy.deepcopy(stock))
    args = five_point_prompts(stock)
    with torch.no_grad(), OpNames() as ops:
        got = fast.mask_decoder(**args)
    with torch.no_grad():
        expected = stock.mask_decoder(**args)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    assert got[0].shape == (5, 3, 256, 256) and expected[0].abs().max() > 0.1  # (not all near zero)
    assert any("convolution" in name for name in ops.names) == (not pixelwise_on), sorted(set(ops.names))


def test_only_a_2x2_stride_2_transposed_convolution_runs_as_per_pixel_products():
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(6, 5, kernel_size=2, stride=2)
    weight, bias = sam_fast._pixelwise(conv)
    x = torch.randn(2, 6, 3, 4)
    per_pixel = torch.nn.functional.linear(x.permute(0, 2, 3, 1), weight, bias)  # [2, 3, 4, (a, b, out)]
    laid_out = per_pixel.view(2, 3, 4, 2, 2, 5).permute(0, 5, 1, 3, 2, 4).reshape(2, 5, 6, 8)
    torch.testing.assert_close(laid_out, conv(x), atol=1e-6, rtol=1e-6)
    for other in (
        torch.nn.ConvTranspose2d(6, 5, kernel_size=3, stride=2),
        torch.nn.ConvTranspose2d(6, 5, kernel_size=2, stride=1),
        torch.nn.ConvTranspose2d(6, 5, kernel_size=2, stride=2, padding=1),
        torch.nn.ConvTranspose2d(6, 4, kernel_size=2, stride=2, groups=2),
    ):
        assert sam_fast._pixelwise(other) is None, other


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_every_attention_over_the_image_tokens_runs_fused(autocast):
    """The tokens' reading of the image tokens goes to a fused attention kernel, which
    takes only tokens whose channels lie side by side: given the image embedding's
    channels-first view it falls back to the unfused product (``_safe_softmax`` over a
    [prompts x 56, 4,096] matrix, in float32) with the same numbers."""
    sam = share_image_tokens(build_sam("tiny").eval())
    side = sam.image_encoder.img_size
    grid, dim = side // 16, sam.prompt_encoder.embed_dim
    points = torch.rand(6, 1, 2) * side
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        sparse, dense = sam.prompt_encoder(points=(points, torch.ones(6, 1, dtype=torch.int)), boxes=None, masks=None)
        with OpNames() as ops:
            sam.mask_decoder(
                image_embeddings=torch.randn(1, dim, grid, grid),
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
    fused = [name for name in ops.names if name.startswith("_scaled_dot_product_flash_attention")]
    assert len(fused) == 5  # the tokens' self-attention twice, their reading of the image three times
    assert not [
        name for name in ops.names if "safe_softmax" in name or name.startswith("_scaled_dot_product_attention_math")
    ]


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_point_prompts_embed_to_segment_anythings_bits_without_a_nonzero(autocast):
    """segment-anything adds each label's embedding by boolean-mask indexing
    (``embedding[labels == 1] += weight``): a ``nonzero`` per read and write, each a
    wait for the device before the decoder's kernels are queued. ``load_sam``'s prompt
    encoder selects by ``torch.where``: the same bits, rounded into bfloat16 under
    autocast as the in-place sum is, for padding, negative and positive points."""
    torch.manual_seed(1)
    stock = build_sam("tiny").eval()
    for p in stock.prompt_encoder.parameters():  # every label's weight apart from the others
        p.data.add_(0.1 * torch.randn_like(p))
    ours = embed_points_in_queue(copy.deepcopy(stock))
    assert "_embed_points" in vars(ours.prompt_encoder)
    side = stock.image_encoder.img_size
    points = torch.rand(8, 3, 2) * side
    labels = torch.tensor([[1, 0, -1], [0, 1, 1], [-1, -1, 1], [1, 1, 1], [0, 0, 0], [1, -1, 0], [0, -1, 1], [1, 0, 0]])
    boxes = torch.tensor([[10.0, 20.0, 120.0, 200.0]]).repeat(8, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for box in (None, boxes):  # padded (as the generator asks) and not
            want = stock.prompt_encoder(points=(points, labels), boxes=box, masks=None)
            with OpNames() as ops:
                got = ours.prompt_encoder(points=(points, labels), boxes=box, masks=None)
            rounded = torch.equal(want[0], want[0].bfloat16().float())  # (the sparse ones are cast up after)
            assert rounded == autocast
            assert [g.dtype for g in got] == [w.dtype for w in want]
            bits = lambda t: t.contiguous().view(torch.int32)  # noqa: E731  (-0.0 and 0.0 apart, as equal() is not)
            assert all(torch.equal(bits(g), bits(w)) for g, w in zip(got, want, strict=True))
            assert not [name for name in ops.names if name.startswith(("nonzero", "index"))], ops.names


def test_the_decoder_runs_on_the_meta_device_where_stage_floor_counts_it():
    """``benchmarks/stage_floor.py`` counts the decoder's FLOPs and bytes on PyTorch's
    meta device, which autocast does not know: the decoder must not ask it about autocast."""
    sam = share_image_tokens(build_sam("tiny").eval()).to("meta")
    side = sam.image_encoder.img_size
    grid, dim = side // 16, sam.prompt_encoder.embed_dim
    with torch.no_grad():  # point prompts as the prompt encoder gives them (as stage_floor.py makes them)
        masks, iou = sam.mask_decoder(
            image_embeddings=torch.empty(1, dim, grid, grid, device="meta"),
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=torch.empty(5, 2, dim, device="meta"),
            dense_prompt_embeddings=torch.empty(1, dim, grid, grid, device="meta").expand(5, -1, -1, -1),
            multimask_output=True,
        )
    assert masks.shape == (5, 3, side // 4, side // 4) and iou.shape == (5, 3)


def test_a_generator_on_a_gpu_compiles_its_decoder_by_default_and_a_cpu_does_not(sam, monkeypatch):
    from segment_anything.modeling import Sam

    from usesearch.masks.amg import SamMaskGenerator
    from usesearch.masks.sam_compile import CompiledDecoder

    assert SamMaskGenerator(sam, points_per_side=4).decoder is sam.mask_decoder  # a CPU: eager
    monkeypatch.setattr(Sam, "device", property(lambda self: torch.device("cuda")))
    on_gpu = SamMaskGenerator(sam, points_per_side=4, autocast=False)
    assert isinstance(on_gpu.decoder, CompiledDecoder) and on_gpu.decoder.decoder is sam.mask_decoder
    assert SamMaskGenerator(sam, points_per_side=4, autocast=False, compiled_decoder=False).decoder is sam.mask_decoder
    assert on_gpu.scoring.compiled is not None
    on_gpu.run_eagerly()  # a short GPU run's, or --no-compile's: nothing compiled
    assert on_gpu.decoder is sam.mask_decoder and on_gpu.scoring.compiled is None
    assert not on_gpu.scoring.compiled_large  # (nor a CPU's scoring of large photos)


@UPSCALINGS
def test_a_compiled_decoder_traces_the_shared_token_path_and_gives_the_same_masks(
    sam, image, monkeypatch, pixelwise_on
):
    """Through TorchDynamo (the eager backend: inductor's C++ build takes minutes on
    two cores; its outputs were 3e-7 from eager's in float32 on a CPU, by hand)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from tests.helpers import LOW
    from usesearch.masks import sam_compile
    from usesearch.masks.amg import SamMaskGenerator

    monkeypatch.setattr(sam_compile, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(sam_fast, "PIXELWISE_ON", pixelwise_on)
    torch._dynamo.reset()
    counters.clear()
    plain = SamMaskGenerator(sam, points_per_side=6, **LOW).generate(image)
    compiled_generator = SamMaskGenerator(sam, points_per_side=6, compiled_decoder=True, **LOW)
    compiled = compiled_generator.generate(image)
    assert counters["stats"]["unique_graphs"] >= 1 and not compiled_generator.decoder.failed
    assert len(compiled) == len(plain) > 10
    assert [r.rle["counts"] for r in compiled] == [r.rle["counts"] for r in plain]
    torch._dynamo.reset()


def five_point_prompts(sam) -> dict:
    """The mask decoder's inputs for five point prompts on a random image embedding."""
    side = sam.image_encoder.img_size
    sparse, dense = sam.prompt_encoder(points=(torch.rand(5, 1, 2) * side, torch.ones(5, 1)), boxes=None, masks=None)
    return dict(
        image_embeddings=torch.randn(1, sam.prompt_encoder.embed_dim, side // 16, side // 16),
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )


def test_a_decoder_that_fails_to_compile_warns_once_and_runs_eagerly(sam, caplog):
    from usesearch.masks.sam_compile import decoder_for

    decoder = decoder_for(sam, compiled=True)
    attempts = []

    def no_compiler(**inputs):
        attempts.append(1)
        raise RuntimeError("Cannot find a working triton installation.\n(pages of compiler output)")

    decoder.compiled = no_compiler
    with torch.no_grad():
        args = five_point_prompts(sam)
        expected = sam.mask_decoder(**args)
        with caplog.at_level("WARNING"):
            first, second = decoder(**args), decoder(**args)
    for out in (first, second):
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert len(attempts) == 1 and decoder.failed
    (record,) = [r for r in caplog.records if "compiled" in r.getMessage()]
    assert record.getMessage() == (
        "SAM's mask decoder could not be compiled (RuntimeError: Cannot find a working triton installation.):"
        " it runs uncompiled"
    )


def test_a_compiled_decoder_giving_nan_where_eager_does_not_warns_once_and_runs_eagerly(sam, caplog):
    """A compiler's wrong code (on a CPU in bfloat16 inductor once gave SAM's encoder NaN)
    costs the compiled decoder, not the photos; NaN from the eager decoder too is the
    model's, left to the generator's own check, and compiling stays on."""
    from usesearch.masks.sam_compile import decoder_for

    decoder = decoder_for(sam, compiled=True)
    with torch.no_grad():
        args = five_point_prompts(sam)
        expected = sam.mask_decoder(**args)

        def nan_scores(**inputs):
            masks, iou = sam.mask_decoder(**inputs)
            return masks, iou * float("nan")

        def nan_masks(**inputs):
            masks, iou = sam.mask_decoder(**inputs)
            return masks * float("nan"), iou

        decoder.compiled = nan_scores
        # The model's own NaN: the eager decoder gives it too, so compiling stays on.
        hook = sam.mask_decoder.register_forward_hook(lambda module, args, out: (out[0], out[1] * float("nan")))
        both = decoder(**args)
        hook.remove()
        assert torch.isnan(both[1]).all() and not decoder.failed
        decoder.compiled = nan_masks  # finite IoUs, NaN logits: empty masks no later check would see
        with caplog.at_level("WARNING"):
            first, second = decoder(**args), decoder(**args)
    for out in (first, second):
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert decoder.failed
    (record,) = [r for r in caplog.records if "uncompiled" in r.getMessage()]
    assert record.getMessage() == "SAM's mask decoder gave NaN or infinite numbers compiled: it runs uncompiled"


def test_a_compiled_decoder_leaves_out_of_memory_and_bad_input_to_the_caller_and_stays_compiled(sam):
    """Running out of memory, also while compiling (dynamo wraps it), is raised as
    itself: the generator halves its prompt batch. An input the eager decoder refuses
    too is the input's fault: its error is raised, and compiling stays on for the next."""
    from torch._dynamo.exc import BackendCompilerFailed

    from usesearch.masks.sam_compile import decoder_for

    decoder = decoder_for(sam, compiled=True)

    def out_of_memory(**inputs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    def out_of_memory_compiling(**inputs):
        try:
            out_of_memory()
        except torch.cuda.OutOfMemoryError as exc:
            raise BackendCompilerFailed(out_of_memory, exc) from exc

    for compiled in (out_of_memory, out_of_memory_compiling):
        decoder.compiled = compiled
        with pytest.raises(torch.cuda.OutOfMemoryError):
            decoder(image_embeddings=None)
    assert not decoder.failed

    def refuses(**inputs):
        raise RuntimeError("shapes cannot be multiplied")

    decoder.compiled = refuses
    with pytest.raises(TypeError):  # the eager decoder's own error for this input
        decoder(image_embeddings=None)
    assert not decoder.failed


def test_a_decoder_its_caller_compiled_is_not_compiled_again(sam):
    from usesearch.masks.sam_compile import decoder_for

    already = copy.deepcopy(sam)
    already.mask_decoder.compile(backend="eager")
    assert decoder_for(already, compiled=True) is already.mask_decoder
