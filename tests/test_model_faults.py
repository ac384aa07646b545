"""A model that gives NaN or infinite numbers (a precision, a compiler's bug: ``index
--compile --precision bfloat16`` on a CPU once gave NaN image features) must not be
indexed as if it had worked: SAM's masks then all came out empty and each photo was
recorded as done with no segment (never read again), and a NaN vector goes into FAISS
as it is. Such a photo fails with one line saying what to try, and a later run with
``--retry-failed`` indexes it."""

import numpy as np
import pytest
import torch
from segment_anything.modeling.image_encoder import ImageEncoderViT

import usesearch
from tests.helpers import write_photos
from usesearch.errors import ModelOutputError
from usesearch.indexer import IndexOptions, index_paths
from usesearch.indexer.pipeline import load_models

LOW = {"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -10.0}


def nan_features(monkeypatch) -> None:
    forward = ImageEncoderViT.forward
    monkeypatch.setattr(ImageEncoderViT, "forward", lambda self, x: forward(self, x) * float("nan"))


def test_sams_nan_features_fail_the_photo_in_one_line_and_a_retry_indexes_it(monkeypatch, tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    options = IndexOptions(preset="tiny", masker="sam", device="cpu", masker_options=LOW)
    nan_features(monkeypatch)
    report = index_paths([photos], tmp_path / "db", options)
    assert report.done == 0 and report.failed == 2 and report.segments == 0 and len(report.failures) == 2
    for _, message in report.failures:
        assert message.startswith("ModelOutputError: SAM's image encoder gave NaN or infinite numbers")
        assert "(computed in float32)" in message and "\n" not in message
    monkeypatch.undo()
    again = index_paths([photos], tmp_path / "db", options)
    assert again.done == 0 and again.skipped == 2  # failed photos wait for --retry-failed
    retried = index_paths([photos], tmp_path / "db", IndexOptions(**{**vars(options), "retry_failed": True}))
    assert retried.done == 2 and retried.failed == 0 and retried.segments > 0


@pytest.mark.parametrize("embedder", ["use", "crop"])
def test_a_nan_segment_vector_is_refused_not_returned(monkeypatch, embedder):
    model = usesearch.load_model("tiny", embedder=embedder, device="cpu")
    rgb = np.zeros((64, 64, 3), np.uint8)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, :32], masks[1, 32:] = True, True
    assert np.isfinite(model.embed_segments(rgb, masks)).all()
    tower = model.use if embedder == "use" else model.model.visual
    first = next(tower.parameters())
    with torch.no_grad():
        first.fill_(float("nan"))
    with pytest.raises(ModelOutputError, match=r"^the segment embedder gave NaN .*\(computed in float32\)"):
        model.embed_segments(rgb, masks)


def test_the_hint_names_what_to_change_and_sams_generator_refuses_nan_features(monkeypatch):
    from usesearch.errors import model_output_error

    bf16_compiled = str(model_output_error("SAM's image encoder gave", "bfloat16", compiled=True))
    assert "(computed in bfloat16, compiled)" in bf16_compiled
    assert bf16_compiled.endswith("try --precision float32 or no --compile")
    assert str(model_output_error("x gave", "float32", compiled=False)).endswith(
        "try another device or a fresh copy of the weights"
    )
    _, masker = load_models(IndexOptions(preset="tiny", masker="sam", device="cpu", masker_options=LOW))
    nan_features(monkeypatch)
    with pytest.raises(ModelOutputError, match=r"^SAM's image encoder gave NaN"):
        masker.generator.generate(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize("where", ["scores", "mask logits", "one logit"])
def test_sams_decoder_giving_nan_fails_the_photo_too(where):
    """NaN IoUs, or NaN mask logits beside finite IoUs (every mask would come out empty,
    and the photo be indexed as having none), fail the photo."""
    _, masker = load_models(IndexOptions(preset="tiny", masker="sam", device="cpu", masker_options=LOW))
    generator = masker.generator
    decoder = generator.decoder
    assert generator.generate(np.zeros((64, 64, 3), np.uint8))

    def nan_out(**inputs):
        masks, iou = decoder(**inputs)
        if where == "scores":
            return masks, iou * float("nan")
        if where == "one logit":
            masks = masks.clone()
            masks[-1, -1, -1, -1] = float("inf")
            return masks, iou
        return masks * float("nan"), iou

    generator.decoder = nan_out
    with pytest.raises(
        ModelOutputError, match=r"^SAM's mask decoder gave NaN or infinite numbers \(computed in float32\)"
    ):
        generator.generate(np.zeros((64, 64, 3), np.uint8))


def test_nan_a_compiled_decoder_hands_on_is_the_models_not_the_compilers():
    """A ``CompiledDecoder`` hands on NaN only where the eager decoder gave it too (else
    it runs eagerly): the line does not send the user to drop a --compile they may never
    have passed (a GPU compiles its decoder by default)."""
    from usesearch.masks.sam_compile import decoder_for

    _, masker = load_models(IndexOptions(preset="tiny", masker="sam", device="cpu", masker_options=LOW))
    generator = masker.generator
    generator.decoder = decoder_for(generator.model, compiled=True)
    generator.decoder.compiled = generator.model.mask_decoder  # (no compiler: the path's logic alone)
    generator.model.mask_decoder.register_forward_hook(lambda module, args, out: (out[0], out[1] * float("nan")))
    with pytest.raises(ModelOutputError) as raised:
        generator.generate(np.zeros((64, 64, 3), np.uint8))
    assert "(computed in float32)" in str(raised.value) and "--compile" not in str(raised.value)
    assert not generator.decoder.failed


def test_a_compiled_decoders_output_is_checked_finite_once(monkeypatch):
    """The compiled decoder checks its output (to tell the compiler's NaN from the
    model's); the generator checked it again: a second pass over the logits and a
    second wait for the GPU, each prompt batch. The eager decoder's is still checked."""
    from usesearch.masks import amg, sam_compile

    _, masker = load_models(IndexOptions(preset="tiny", masker="sam", device="cpu", masker_options=LOW))
    generator = masker.generator
    checks, calls = [], []
    finite = sam_compile.decoder_finite
    for module in (amg, sam_compile):
        monkeypatch.setattr(module, "decoder_finite", lambda out: checks.append(1) or finite(out))
    generator.model.mask_decoder.register_forward_hook(lambda module, args, out: calls.append(1))
    assert generator.generate(np.zeros((64, 64, 3), np.uint8))
    assert len(checks) == len(calls) > 0  # eager: the generator's check
    generator.decoder = sam_compile.decoder_for(generator.model, compiled=True)
    generator.decoder.compiled = generator.model.mask_decoder  # (no compiler: the path's logic alone)
    checks.clear(), calls.clear()
    assert generator.generate(np.zeros((64, 64, 3), np.uint8))
    assert len(checks) == len(calls) > 0  # compiled: its own check alone (was two a batch)


def test_a_compiled_encoder_giving_nan_where_eager_does_not_runs_eagerly_with_one_warning(caplog, monkeypatch):
    """``--compile``'s encoder blocks: a compiler's wrong code (inductor's CPU bfloat16
    code once gave NaN) costs the compiling, not the photos. Here each block's compiled
    call stands in for such code."""
    _, masker = load_models(IndexOptions(preset="tiny", masker="sam", device="cpu", masker_options=LOW))
    generator = masker.generator
    photo = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    expected = [r.rle["counts"] for r in generator.generate(photo)]
    blocks = generator.model.image_encoder.blocks
    for block in blocks:
        block._compiled_call_impl = lambda x, block=block: block.forward(x) * float("nan")
    with caplog.at_level("WARNING"):
        first, second = generator.generate(photo), generator.generate(photo)
    assert [r.rle["counts"] for r in first] == [r.rle["counts"] for r in second] == expected and expected
    assert all(block._compiled_call_impl is None for block in blocks)
    (record,) = [r for r in caplog.records if "uncompiled" in r.getMessage()]
    assert record.getMessage() == "SAM's image encoder gave NaN or infinite numbers compiled: it runs uncompiled"
    # NaN from the eager encoder too is the model's: the photo fails, compiling stays on.
    fake = [lambda x, block=block: block.forward(x) * float("nan") for block in blocks]
    for block, call in zip(blocks, fake):
        block._compiled_call_impl = call
    nan_features(monkeypatch)
    with pytest.raises(ModelOutputError, match=r"^SAM's image encoder gave NaN .*\(computed in float32\)"):
        generator.generate(photo)
    assert [block._compiled_call_impl for block in blocks] == fake


@pytest.mark.parametrize("embedder", ["use", "crop"])
def test_compiled_towers_giving_nan_where_eager_ones_do_not_run_eagerly_with_one_warning(caplog, embedder):
    """``--compile``'s towers (CLIP, DINOv2, LLNs; the crop embedder's CLIP): as SAM's
    encoder, a compiler's wrong code costs the compiling, not the photos; each compiled
    region's call stands in for it."""
    from usesearch.masks.sam_compile import compile_regions

    model = usesearch.load_model("tiny", embedder=embedder, device="cpu")
    rgb = np.ascontiguousarray(np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    masks = np.zeros((2, 64, 80), bool)
    masks[0, :32], masks[1, 32:] = True, True
    expected = model.embed_segments(rgb, masks)
    regions = compile_regions(model.use.encoder if embedder == "use" else model.model.visual)  # load_models' choice
    assert len(regions) > 2
    fake = [lambda *a, m=m, **k: m.forward(*a, **k) * float("nan") for m in regions]
    for region, call in zip(regions, fake):
        region._compiled_call_impl = call
    with caplog.at_level("WARNING"):
        first, second = model.embed_segments(rgb, masks), model.embed_segments(rgb, masks)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    assert model.towers_uncompiled and all(region._compiled_call_impl is None for region in regions)
    (record,) = [r for r in caplog.records if "uncompiled" in r.getMessage()]
    said = {"use": "the image towers gave", "crop": "CLIP's image tower gave"}[embedder]
    assert record.getMessage().startswith(f"{said} NaN or infinite numbers compiled: ")


class CompilerFailed(RuntimeError):
    """Stands in for inductor's failures (no C compiler for Triton, a card it does not support)."""


@pytest.mark.parametrize("part", ["SAM's image encoder", "the image towers", "CLIP's image tower"])
def test_a_compiled_part_that_fails_to_run_runs_eagerly_with_one_warning(caplog, part):
    """A GPU run of 1,000 photos compiles every model by default: where the compiler
    cannot (no C compiler for Triton, an old card), each photo would have failed. The
    compiled parts run eagerly from then on, with one warning; where the eager run fails
    too, the error is the input's, raised, and the parts stay compiled."""
    from usesearch.masks.sam_compile import compile_regions

    embedder = "crop" if part == "CLIP's image tower" else "use"
    model, masker = load_models(
        IndexOptions(preset="tiny", masker="sam", embedder=embedder, device="cpu", masker_options=LOW)
    )
    photo = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    masks = np.zeros((2, 64, 80), bool)
    masks[0, :32], masks[1, 32:] = True, True
    if part == "SAM's image encoder":
        module, run = (
            masker.generator.model.image_encoder,
            lambda: [r.rle["counts"] for r in masker.generator.generate(photo)],
        )
    else:
        module, run = (
            (model.use.encoder if embedder == "use" else model.model.visual),
            lambda: model.embed_segments(photo, masks),
        )
    expected = run()
    regions = compile_regions(module)

    def failing(*args, **kwargs):
        raise CompilerFailed("backend='inductor' raised: no C compiler found")

    for region in regions:
        region._compiled_call_impl = failing
    with caplog.at_level("WARNING"):
        first, second = run(), run()
    np.testing.assert_array_equal(np.asarray(first), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(second), np.asarray(expected))
    assert all(region._compiled_call_impl is None for region in regions)
    (record,) = [r for r in caplog.records if "could not run compiled" in r.getMessage()]
    assert record.getMessage() == (
        f"{part} could not run compiled (CompilerFailed: backend='inductor' raised: no C compiler found): "
        "it runs uncompiled"
    )
    # Where the eager run fails too, the error is the input's: raised, compiling stays on.
    for region in regions:
        region._compiled_call_impl = failing
    broken = regions[-1]
    real_forward = broken.forward
    broken.forward = lambda *a, **k: (_ for _ in ()).throw(ValueError("a bad input"))
    try:
        with pytest.raises(ValueError, match="a bad input"):
            run()
    finally:
        broken.forward = real_forward
    assert all(region._compiled_call_impl is failing for region in regions)


def test_a_run_whose_first_photos_all_fail_for_a_model_fault_stops_in_one_line(monkeypatch, tmp_path):
    """Every later photo would fail as they did, each after its full cost; what failed is
    recorded, the rest left for the next run."""
    from usesearch import reports

    monkeypatch.setattr(reports, "MODEL_FAULTS_TO_STOP", 2)
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea", "coffee", "rocket"))
    options = IndexOptions(preset="tiny", masker="sam", device="cpu", masker_options=LOW)
    nan_features(monkeypatch)
    with pytest.raises(ModelOutputError) as raised:
        index_paths([photos], tmp_path / "db", options)
    message = str(raised.value)
    assert message.startswith("stopped: the first 2 photos all failed as the first did (SAM's image encoder gave NaN")
    assert "\n" not in message and message.endswith("--retry-failed runs them again")
    monkeypatch.undo()
    resumed = index_paths([photos], tmp_path / "db", IndexOptions(**{**vars(options), "retry_failed": True}))
    assert resumed.done == 4 and resumed.failed == 0
