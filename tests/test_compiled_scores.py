"""Candidates' stability scores and boxes in one fused pass (``CompiledScores``, the
generator's default on CUDA): the numbers of segment-anything's helpers over the
upscaled logits, without writing those logits. Compiled here by inductor's CPU
backend; ``gpu_check.sh`` checks the GPU's."""

import itertools
import logging
import time
import types

import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide

from tests.helpers import LOW, allocated_numels, allocated_shapes
from usesearch.masks import amg, amg_utils, candidate_scoring
from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.amg_utils import (
    CompiledScores,
    eager_stability_and_boxes,
    prompt_batch,
    stability_and_boxes,
    upscale_logits,
)
from usesearch.masks.candidate_scoring import CandidateScoring

SIDE = 1024


def blob_logits(count: int, seed: int = 0) -> torch.Tensor:
    """SAM-like low-res logits ([N, 1, 256, 256]): a noisy blob each, somewhere in the
    part of the canvas every tested photo shape covers; one empty mask, one full."""
    generator = torch.Generator().manual_seed(seed)
    centres = 20 + 130 * torch.rand(count, 2, 1, 1, generator=generator)
    radii = 6 + 50 * torch.rand(count, 1, 1, generator=generator)
    grid = torch.arange(256.0)
    squared = (grid[:, None] - centres[:, 0]) ** 2 + (grid[None, :] - centres[:, 1]) ** 2
    noise = F.interpolate(torch.randn(count, 1, 16, 16, generator=generator), (256, 256), mode="bilinear")
    logits = (8 * (1 - squared / radii**2))[:, None] + 3 * noise
    logits[0] = -30.0
    logits[1] = 30.0
    return logits


def shapes(photo_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(model input size, crop size) of a whole photo, as the generator passes them."""
    return ResizeLongestSide.get_preprocess_shape(*photo_hw, SIDE), photo_hw


# The photo already at the model's size (one resize), portrait, square, and larger or
# smaller than the canvas (a second resize to the photo).
PHOTOS = [(768, 1024), (1024, 683), (1024, 1024), (1500, 2000), (333, 500)]


@pytest.mark.parametrize("photo_hw", PHOTOS, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_the_one_pass_form_gives_segment_anythings_stability_scores_and_boxes(photo_hw):
    low_res = blob_logits(12)
    input_size, crop_hw = shapes(photo_hw)
    logits = upscale_logits(low_res, SIDE, input_size, crop_hw)
    assert tuple(logits.shape) == (12, *crop_hw)
    stability, boxes = stability_and_boxes(low_res, SIDE, input_size, crop_hw, 0.0, 1.0)
    stock_stability = calculate_stability_score(logits, 0.0, 1.0)
    stock_boxes = batched_mask_to_box(logits > 0.0)
    assert torch.equal(boxes, stock_boxes) and boxes.dtype == stock_boxes.dtype
    assert torch.equal(stability[1:], stock_stability[1:]) and stability.dtype == stock_stability.dtype
    assert torch.isnan(stability[0]) and torch.isnan(stock_stability[0])  # empty at both levels: 0 / 0, as stock
    assert boxes[0].tolist() == [0, 0, 0, 0] and boxes[1].tolist() == [0, 0, crop_hw[1] - 1, crop_hw[0] - 1]
    assert len(set(map(tuple, boxes[2:].tolist()))) > 5 and 0 < stability[2:].min() < stability[2:].max() < 1


def test_compiled_scoring_gives_the_same_numbers_and_never_writes_the_full_size_logits():
    from torch._inductor.utils import fresh_cache, run_and_get_code

    scores = CompiledScores(SIDE, 0.0, 1.0)
    # The benchmark's photo (one resize) and a larger one (a second resize to the photo).
    for photo_hw in [(768, 1024), (1500, 2000)]:
        low_res = blob_logits(9, seed=len(photo_hw))
        input_size, crop_hw = shapes(photo_hw)
        # Compiled afresh, in a cache of its own: from a warm cache inductor hands back the code
        # another run compiled (another test's, for as many candidates as it had).
        with fresh_cache():
            (stability, boxes), sources = run_and_get_code(scores, low_res, input_size, crop_hw)
        eager_stability, eager_boxes = eager_stability_and_boxes(low_res, SIDE, input_size, crop_hw, 0.0, 1.0)
        assert scores.failed is None
        # Bit for bit at the canvas's size; larger, within float rounding (the composite
        # resize sums the same products in another order): a pixel at a threshold may move.
        assert (boxes - eager_boxes).abs().max() <= (0 if max(crop_hw) <= SIDE else 1)
        gap = (stability.nan_to_num(-1.0) - eager_stability.nan_to_num(-1.0)).abs().max()
        assert gap <= (0 if max(crop_hw) <= SIDE else 1e-5)
        # At the canvas's size every buffer the compiled code allocates is per row at
        # most ([N, H]); none has the logits' [N, H, W], nor their pixels flattened into
        # one dimension. Larger (the composite resize's taps), the rows resized first
        # ([N, H, 256]: a low-res row per photo row) are the largest.
        shapes_allocated = [shape for source in sources for shape in allocated_shapes(source)]
        assert shapes_allocated, "the compiled code allocates its outputs: the parser must see them"
        pixels = crop_hw[0] * crop_hw[1]
        numels = [n for source in sources for n in allocated_numels(source)]
        assert len(numels) == len(shapes_allocated)
        if max(crop_hw) <= SIDE:
            assert all(len(shape) <= 2 for shape in shapes_allocated), shapes_allocated
            assert max(numels) <= len(low_res) * max(crop_hw) and max(numels) < pixels  # not one photo's worth
        else:
            assert sum(len(shape) > 2 for shape in shapes_allocated) == 1, shapes_allocated
            assert max(numels) == len(low_res) * crop_hw[0] * low_res.shape[-1] < len(low_res) * pixels / 7
        # Noisy logits (many pixels near the thresholds): a photo larger than the canvas
        # is resized twice, whose rounding the compiled code does not always repeat.
        noisy = low_res + 3 * torch.randn(low_res.shape, generator=torch.Generator().manual_seed(5))
        stability, boxes = scores(noisy, input_size, crop_hw)
        eager_stability, eager_boxes = eager_stability_and_boxes(noisy, SIDE, input_size, crop_hw, 0.0, 1.0)
        assert (boxes - eager_boxes).abs().max() <= 1
        assert torch.allclose(stability.nan_to_num(-1.0), eager_stability.nan_to_num(-1.0), rtol=0, atol=1e-5)
        if crop_hw[0] <= input_size[0]:  # at (or under) the canvas's size: bit for bit
            assert torch.equal(boxes, eager_boxes) and torch.equal(
                stability.nan_to_num(-1.0), eager_stability.nan_to_num(-1.0)
            )


def test_any_number_of_candidates_takes_one_compiled_graph():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # every CompiledScores shares one code object and its graphs
    scores = CompiledScores(SIDE, 0.0, 1.0)
    input_size, crop_hw = shapes((768, 1024))
    before = counters["stats"]["unique_graphs"]
    for count in (5, 9, 40):
        low_res = blob_logits(count)
        stability, boxes = scores(low_res, input_size, crop_hw)
        assert torch.equal(boxes, eager_stability_and_boxes(low_res, SIDE, input_size, crop_hw, 0.0, 1.0)[1])
    assert counters["stats"]["unique_graphs"] - before == 1


def test_a_compiler_failure_is_one_line_and_scoring_goes_on_eagerly(caplog):
    scores = CompiledScores(SIDE, 0.0, 1.0)
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.\nmore")

    scores._compiled = broken
    low_res = blob_logits(6)
    input_size, crop_hw = shapes((768, 1024))
    with caplog.at_level(logging.WARNING, logger=amg_utils.__name__):
        first = scores(low_res, input_size, crop_hw)
        second = scores(low_res, input_size, crop_hw)
    expected = eager_stability_and_boxes(low_res, SIDE, input_size, crop_hw, 0.0, 1.0)
    for stability, boxes in (first, second):
        assert torch.equal(boxes, expected[1]) and torch.equal(stability.nan_to_num(-1), expected[0].nan_to_num(-1))
    assert len(calls) == 1, "after a failure the compiler is not asked again"
    assert scores.failed == "RuntimeError: Failed to find C compiler. Please specify via CC environment variable."
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert "scoring eagerly" in caplog.records[0].getMessage()


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "inside-a-compiler-error"])
def test_running_out_of_gpu_memory_is_not_taken_for_a_compiler_failure(wrapped):
    """The generator halves its prompt batch on an OOM: that error must reach it, also
    when inductor wraps it in its own error while compiling."""
    scores = CompiledScores(SIDE, 0.0, 1.0)

    def out_of_memory(*args):
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except torch.cuda.OutOfMemoryError as oom:
            if wrapped:
                raise RuntimeError("backend compiler failed") from oom
            raise

    scores._compiled = out_of_memory
    with pytest.raises(torch.cuda.OutOfMemoryError):  # itself, not the compiler's wrapper
        scores(blob_logits(4), (768, 1024), (768, 1024))
    assert scores.failed is None


def test_photo_shapes_past_the_graph_limit_are_scored_eagerly_and_said_once(monkeypatch, caplog):
    """Past its graph limit torch would run the function uncompiled without a word
    (a form that costs more than the stock helpers): those calls take the stock
    helpers instead, in groups, and compiling stays on for the shapes it has."""
    torch._dynamo.reset()
    monkeypatch.setattr(amg_utils, "SCORE_GRAPHS", 1)
    monkeypatch.setattr(amg_utils, "FALLBACK_PIXELS", 3 * SIDE * SIDE)  # three masks a group
    scores = CompiledScores(SIDE, 0.0, 1.0)
    low_res = blob_logits(7)
    first, other = shapes((768, 1024)), shapes((1024, 683))  # another class: portrait
    eager = amg_utils.eager_stability_and_boxes
    groups = []
    monkeypatch.setattr(amg_utils, "eager_stability_and_boxes", lambda lr, *a: groups.append(len(lr)) or eager(lr, *a))
    with caplog.at_level(logging.WARNING, logger=amg_utils.__name__):
        scores(low_res, *first)
        assert groups == []  # compiled
        for _ in range(2):
            stability, boxes = scores(low_res, *other)
            assert torch.equal(boxes, eager(low_res, SIDE, *other, 0.0, 1.0)[1])
    assert groups == [3, 3, 1, 3, 3, 1] and scores.over_limit == 2 and scores.failed is None
    ours = [r.getMessage() for r in caplog.records if r.name == amg_utils.__name__]
    assert len(ours) == 1 and "others are scored eagerly" in ours[0]
    assert not [r for r in caplog.records if "recompile_limit" in str(r.msg)]  # torch's own lines, dropped
    groups.clear()
    scores(low_res, *first)
    assert groups == []  # the shape it compiled for stays compiled


@pytest.mark.parametrize(
    "settings",
    [
        dict(points_per_side=8, **LOW),
        dict(points_per_side=8, pred_iou_thresh=-10.0, stability_score_thresh=0.6),
    ],
    ids=["plain", "stability-filter"],  # (the coffee photo, 134x200, under the tiny SAM's canvas)
)
def test_the_generator_with_compiled_scoring_gives_the_same_masks(sam, image, settings):
    eager = SamMaskGenerator(sam, compiled_scores=False, **settings).generate(image)
    compiled_generator = SamMaskGenerator(sam, compiled_scores=True, **settings)
    compiled = compiled_generator.generate(image)
    assert compiled_generator.scoring.compiled is not None and compiled_generator.scoring.compiled.failed is None
    assert len(eager) > 10
    assert [(r.rle, r.box_xyxy, r.stability_score, r.predicted_iou) for r in compiled] == [
        (r.rle, r.box_xyxy, r.stability_score, r.predicted_iou) for r in eager
    ]


def test_compiled_scoring_is_the_default_on_cuda_from_the_start(sam, monkeypatch):
    monkeypatch.setattr(amg, "uses_bf16", lambda device: True)
    on_cuda = types.SimpleNamespace(
        device=torch.device("cuda"), image_encoder=sam.image_encoder, mask_decoder=sam.mask_decoder, mask_threshold=0.0
    )
    assert isinstance(SamMaskGenerator(on_cuda).scoring.compiled, CompiledScores)  # type: ignore[arg-type]
    assert SamMaskGenerator(on_cuda, compiled_scores=False).scoring.compiled is None  # type: ignore[arg-type]


def test_a_cpu_scores_photos_at_the_canvas_by_cells_however_long_the_run(sam, image, monkeypatch):
    """A CPU never compiles scoring for crops at or under the canvas (until 2026-12-06
    it did once eager scoring had cost a cold compile, and the compiled pass changes a
    rare candidate by a pixel there, so a record depended on when the switch came):
    cells give the helpers' bits at the cost of the compiled pass. However many
    photos, the compiled path (counted) is never built or called, cells score every
    batch, and the masks are the eager ones; ``compiled_scores=True`` compiles from
    the first photo, and without a C++ compiler a CPU compiles nothing at all."""
    scored: list[int] = []
    by_cells = CandidateScoring.by_cells

    class Counted(CompiledScores):
        def __call__(self, low_res, input_size, crop_hw):
            scored.append(len(low_res))
            self.failed = "counted only"  # its eager fallback: the same numbers, no compile
            return super().__call__(low_res, input_size, crop_hw)

    def cells(self, low_res, input_size, crop_hw):
        answer = by_cells(self, low_res, input_size, crop_hw)
        celled.append(answer is not None)
        return answer

    celled: list[bool] = []
    monkeypatch.setattr(candidate_scoring, "CompiledScores", Counted)
    monkeypatch.setattr(CandidateScoring, "by_cells", cells)
    settings = dict(points_per_side=8, points_per_batch=16, **LOW)
    assert max(image.shape[:2]) <= sam.image_encoder.img_size
    reference = SamMaskGenerator(sam, compiled_scores=False, **settings).generate(image)
    assert len(reference) > 10 and len(celled) == 4 and all(celled)

    generator = SamMaskGenerator(sam, **settings)
    assert generator.scoring.compiled_large and generator.scoring.compiled is None
    clock = itertools.count(step=60.0)  # every reading a minute on: "a long run"
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    assert [generator.generate(image) for _ in range(3)] == [reference] * 3
    monkeypatch.undo()
    assert generator.scoring.compiled is None and scored == [] and len(celled) == 16 and all(celled)

    monkeypatch.setattr(candidate_scoring, "CompiledScores", Counted)
    compiled = SamMaskGenerator(sam, compiled_scores=True, **settings)
    assert compiled.scoring.compiled_any_size and compiled.generate(image) == reference and len(scored) == 4
    monkeypatch.setattr(candidate_scoring.shutil, "which", lambda name: None)
    assert not SamMaskGenerator(sam, **settings).scoring.compiled_large


def test_a_cpu_scores_a_large_photo_compiled_from_the_first_one(sam, image, monkeypatch):
    """A photo past the canvas of ``COMPILE_PIXELS`` or more is scored compiled on a CPU
    from the first one (its eager scoring alone costs a cold compile), by its size
    alone: a smaller one past the canvas stays eager, and one at or under the canvas
    is scored by cells. The compiled path is counted and scores
    eagerly here (its numbers are tested above). Without a C++ compiler, or with
    ``compiled_scores=False``, it stays eager."""
    scored: list[int] = []

    class Counted(CompiledScores):
        def __call__(self, low_res, input_size, crop_hw):
            scored.append(max(crop_hw))
            self.failed = "counted only"
            return super().__call__(low_res, input_size, crop_hw)

    monkeypatch.setattr(candidate_scoring, "CompiledScores", Counted)
    monkeypatch.setattr(candidate_scoring, "COMPILE_PIXELS", 60_000)
    settings = dict(points_per_side=8, points_per_batch=16, **LOW)
    side = sam.image_encoder.img_size
    large, wide = image.repeat(2, axis=0).repeat(2, axis=1), image.repeat(2, axis=1)
    assert max(image.shape[:2]) <= side < min(max(large.shape[:2]), max(wide.shape[:2]))
    assert large.shape[0] * large.shape[1] >= 60_000 > wide.shape[0] * wide.shape[1]
    references = {
        name: SamMaskGenerator(sam, compiled_scores=False, **settings).generate(photo)
        for name, photo in [("image", image), ("large", large), ("wide", wide)]
    }
    assert min(len(r) for r in references.values()) > 10

    generator = SamMaskGenerator(sam, **settings)
    assert generator.scoring.compiled is None and generator.scoring.compiled_large
    assert generator.generate(wide) == references["wide"] and scored == []
    assert generator.generate(large) == references["large"] and scored == [max(large.shape[:2])] * 4
    assert generator.generate(image) == references["image"] and len(scored) == 4  # by cells
    assert generator.generate(wide) == references["wide"] and len(scored) == 4
    assert not generator.scoring.compiled_any_size

    assert SamMaskGenerator(sam, compiled_scores=False, **settings).generate(large) == references["large"]
    monkeypatch.setattr(candidate_scoring.shutil, "which", lambda name: None)
    assert SamMaskGenerator(sam, **settings).generate(large) == references["large"] and len(scored) == 4


def test_with_compiled_scoring_a_large_photos_prompt_batch_is_bounded_by_the_canvas_alone(sam, monkeypatch):
    """Eager scoring upscales a batch's logits to the photo (288 MB a prompt for 12 MP);
    compiled scoring never does, so the batch is sized as for a photo at the canvas's size."""
    monkeypatch.setattr(amg, "uses_bf16", lambda device: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    on_cuda = types.SimpleNamespace(
        device=torch.device("cuda"), image_encoder=sam.image_encoder, mask_decoder=sam.mask_decoder, mask_threshold=0.0
    )
    side = sam.image_encoder.img_size
    large, at_canvas = ((3000, 4000), 1024), ((side, side), 1024)
    eager = SamMaskGenerator(on_cuda, compiled_scores=False)  # type: ignore[arg-type]
    compiled = SamMaskGenerator(on_cuda, compiled_scores=True)  # type: ignore[arg-type]
    eager_fit = lambda shape: eager._points_that_fit(eager._batch_key(*shape))  # noqa: E731
    compiled_fit = lambda shape: compiled._points_that_fit(compiled._batch_key(*shape))  # noqa: E731
    assert eager_fit(large) == prompt_batch(8 * 2**30, side, (3000, 4000), 1024)
    assert compiled_fit(large) == compiled_fit(at_canvas) == eager_fit(at_canvas)
    assert compiled_fit(large) > eager_fit(large)
    # Sized once for every crop shape: a second shape's free memory would size another batch.
    assert compiled._batch_key((3000, 4000), 1024) == compiled._batch_key((768, 1024), 1024)
    assert eager._batch_key((3000, 4000), 1024) != eager._batch_key((768, 1024), 1024)


def test_the_inlining_bound_is_set_for_every_device(monkeypatch):
    """Inductor inlines a value several consumers read only under an op-count bound: 30
    on a GPU, 50 on a CPU by default. The upscaled logits' code lies between (at 30 a
    CPU writes them too, 9.7 GB a 1024-px photo), so the bound is set explicitly and
    the buffer test above, run on a CPU, speaks for a GPU. (Shown by compiling at 30
    in 0b9895e; a cold compile of its own, so not repeated here.) Both graphs gather by
    indices in bounds by construction, so inductor's check at every read is off
    (their numbers: the tests above)."""
    asked: dict[str, dict] = {}
    monkeypatch.setattr(amg_utils.torch, "compile", lambda fn, **kwargs: asked.update({fn.__name__: kwargs}) or fn)
    CompiledScores(SIDE, 0.0, 1.0)
    assert set(asked) == {"scores", "separable"} and all(kw["dynamic"] is True for kw in asked.values())
    assert asked["scores"]["options"]["realize_opcount_threshold"] == amg_utils.REALIZE_OPS > 50
    assert [kw["options"]["assert_indirect_indexing"] for kw in asked.values()] == [False, False]
    asked.clear()
    CompiledScores(SIDE, 0.0, 1.0, backend="aot_eager")  # (options are inductor's)
    assert [kw["options"] for kw in asked.values()] == [None, None]
