"""The backbones' work ahead (``usesearch/models/ahead.py``): a group's photos in one
call (``features_ahead``) and that call beside SAM (``prepare``), each on by default on
a GPU only, checked on the CPU against one call a photo."""

import threading
import types

import numpy as np
import pytest
import torch
from skimage import data

import usesearch
from indexer.compute import compute_photos
from tests.helpers import wrapped_out_of_memory
from usesearch import side_stream
from usesearch.masks.registry import build_masker
from usesearch.models import ahead

NAMES = ("astronaut", "chelsea", "coffee")


@pytest.fixture(scope="module")
def photos():
    return [np.ascontiguousarray(getattr(data, name)()[::4, ::4]) for name in NAMES]


def clock():
    return types.SimpleNamespace(masker_seconds=0.0, model_seconds=0.0)


def test_batching_is_on_by_default_for_a_gpu_alone():
    assert ahead.batches_backbones(torch.device("cuda", 0))
    assert not ahead.batches_backbones(torch.device("cpu"))


def test_a_groups_embeddings_batched_equal_one_call_a_photo(photos):
    model = usesearch.load_model("tiny", device="cpu")
    masker = build_masker("felzenszwalb", usesearch.get_preset("tiny"), "cpu", max_masks=6)
    paths = [f"{name}.png" for name in NAMES]
    assert not model.batch_backbones
    single = compute_photos(photos, paths, model, masker, clock())
    calls = []
    features_of = model._features_of
    model._features_of = lambda images: calls.append(len(images)) or features_of(images)
    model.batch_backbones = True
    batched = compute_photos(photos, paths, model, masker, clock())
    assert calls == [3]  # one backbone call for the group, none a photo
    assert not model._features  # every photo's features used
    for (rows_a, vectors_a), (rows_b, vectors_b) in zip(single, batched, strict=True):
        assert rows_a == rows_b and len(vectors_a) > 0
        np.testing.assert_allclose(vectors_b, vectors_a, atol=1e-5)


def test_a_failed_batch_leaves_each_photo_to_its_own_call(photos):
    model = usesearch.load_model("tiny", device="cpu")
    masker = build_masker("felzenszwalb", usesearch.get_preset("tiny"), "cpu", max_masks=6)
    paths = [f"{name}.png" for name in NAMES]
    expected = compute_photos(photos, paths, model, masker, clock())
    features_of = model._features_of

    def refuse_batches(images):
        if len(images) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return features_of(images)

    model._features_of = refuse_batches
    model.batch_backbones = True
    got = compute_photos(photos, paths, model, masker, clock())
    for (rows_a, vectors_a), (rows_b, vectors_b) in zip(expected, got, strict=True):
        assert rows_a == rows_b and len(vectors_a) > 0
        np.testing.assert_allclose(vectors_b, vectors_a, atol=1e-6)
    assert not model.batch_backbones  # a card too small for a group: one photo a call from then on


def test_a_batch_failing_otherwise_keeps_batching_for_the_next_group(photos):
    model = usesearch.load_model("tiny", device="cpu")
    masker = build_masker("felzenszwalb", usesearch.get_preset("tiny"), "cpu", max_masks=6)
    features_of = model._features_of
    failures = iter([RuntimeError("a photo the backbones refuse")])

    def fail_once(images):
        if len(images) > 1:
            error = next(failures, None)
            if error is not None:
                raise error
        return features_of(images)

    model._features_of = fail_once
    model.batch_backbones = True
    compute_photos(photos, list(NAMES), model, masker, clock())
    assert model.batch_backbones
    model.features_ahead(photos)
    assert len(model._features) == len(photos)  # the next group batched again


@pytest.mark.parametrize("aside", [False, True], ids=["nothing aside", "work aside"])
def test_a_group_out_of_memory_wrapped_by_the_compiler_stops_batching_or_the_work_aside(photos, aside):
    """The towers compiled wrap an out-of-memory error in their own: still the card's
    shortage. With work running aside (SAM's encoder ahead) that work is stopped and the
    next group batched; with none, batching stops for the run."""
    side_stream.release_work_aside()
    model = usesearch.load_model("tiny", device="cpu")
    features_of = model._features_of
    failures = iter([wrapped_out_of_memory()])

    def short_once(images):
        error = next(failures, None) if len(images) > 1 else None
        if error is not None:
            raise error
        return features_of(images)

    model._features_of = short_once
    model.batch_backbones = True
    encoder_ahead = side_stream.SideStream(torch.device("cpu"), "usesearch-test", {}, "test")
    encoder_ahead.on = aside
    encoder_ahead.ran_in_line(photos)
    encoder_ahead.start(photos, len)
    model.features_ahead(photos)
    assert not model._features and model.batch_backbones is aside and not encoder_ahead.on
    model.features_ahead(photos)
    assert len(model._features) == (len(photos) if aside else 0)


@pytest.mark.parametrize("aside", [False, True], ids=["nothing aside", "work aside"])
def test_a_photo_out_of_memory_while_work_runs_aside_is_tried_again_without_it(photos, aside):
    """A photo's pooling out of the card's memory while the backbones run beside SAM:
    that work is stopped for the run and the photo computed again, not failed; with
    nothing aside the shortage is the photo's own, recorded as its error."""
    side_stream.release_work_aside()
    model = usesearch.load_model("tiny", device="cpu")
    masker = build_masker("felzenszwalb", usesearch.get_preset("tiny"), "cpu", max_masks=6)
    expected = compute_photos(photos, list(NAMES), model, masker, clock())
    model.beside.on = aside
    model.beside.ran_in_line(photos)
    compute_photos(photos, list(NAMES), model, masker, clock())  # the beside stream's thread made
    embed, calls, shortages = model.embed_segments, [], iter([wrapped_out_of_memory()])

    def short_once(rgb, masks):
        calls.append(len(masks))
        error = next(shortages, None) if rgb is photos[1] else None
        if error is not None:
            raise error
        return embed(rgb, masks)

    model.embed_segments = short_once
    got = compute_photos(photos, list(NAMES), model, masker, clock())
    assert len(calls) == len(photos) + aside  # the second photo's call again, where work ran aside
    assert not model.beside.on
    if not aside:
        assert isinstance(got[1], RuntimeError) and side_stream.release_work_aside() is False
        got[1] = expected[1]
    for (rows_a, vectors_a), (rows_b, vectors_b) in zip(expected, got, strict=True):
        assert rows_a == rows_b and len(vectors_a) > 0
        np.testing.assert_allclose(vectors_b, vectors_a, atol=1e-6)


def test_work_on_side_streams_is_on_by_default_for_a_gpu_alone():
    assert side_stream.used_on(torch.device("cuda", 0))
    assert not side_stream.used_on(torch.device("cpu"))  # a CPU's cores are SAM's already


def test_a_groups_backbones_beside_sam_equal_one_call_a_photo(photos):
    """On a GPU ``prepare`` starts the group's backbone call in the embedder's thread,
    on a stream of its own, while SAM runs on the same photos; a CPU runs the same code
    but the stream."""
    model = usesearch.load_model("tiny", device="cpu")
    masker = build_masker("felzenszwalb", usesearch.get_preset("tiny"), "cpu", max_masks=6)
    paths = [f"{name}.png" for name in NAMES]
    assert not model.beside.on
    single = compute_photos(photos, paths, model, masker, clock())
    calls = []
    towers = model._towers
    model._towers = lambda smalls: calls.append((threading.current_thread().name, len(smalls))) or towers(smalls)
    model.beside.on = model.batch_backbones = True
    compute_photos(photos, paths, model, masker, clock())  # the first group of its size: in line (compiled there)
    beside = compute_photos(photos, paths, model, masker, clock())
    (first, size_a), (then, size_b) = calls  # a call a group; for the second, none in line
    assert first == threading.current_thread().name and then.startswith("usesearch-beside")
    assert size_a == size_b == len(photos)
    assert not model.beside._kept and not model._features  # every photo's features used, none batched again
    assert model.seconds["backbones beside SAM"] > 0
    for (rows_a, vectors_a), (rows_b, vectors_b) in zip(single, beside, strict=True):
        assert rows_a == rows_b and len(vectors_a) > 0
        np.testing.assert_allclose(vectors_b, vectors_a, atol=1e-5)


@pytest.mark.parametrize("out_of_memory", [True, False], ids=["out of memory", "another error"])
def test_a_call_beside_sam_that_fails_leaves_each_photo_to_its_own(photos, out_of_memory):
    model = usesearch.load_model("tiny", device="cpu")
    masker = build_masker("felzenszwalb", usesearch.get_preset("tiny"), "cpu", max_masks=6)
    expected = compute_photos(photos, list(NAMES), model, masker, clock())
    towers = model._towers
    error = torch.cuda.OutOfMemoryError("CUDA out of memory") if out_of_memory else RuntimeError("refused")

    def fail_beside(smalls):
        if threading.current_thread() is not threading.main_thread():
            raise error
        return towers(smalls)

    model._towers = fail_beside
    model.beside.on = True
    model.beside.ran_in_line(photos)  # (as a first group of this size would have)
    got = compute_photos(photos, list(NAMES), model, masker, clock())
    for (rows_a, vectors_a), (rows_b, vectors_b) in zip(expected, got, strict=True):
        assert rows_a == rows_b and len(vectors_a) > 0
        np.testing.assert_allclose(vectors_b, vectors_a, atol=1e-6)
    assert model.beside.on is not out_of_memory  # memory beside SAM's too little: in line for the run


def test_compiled_towers_giving_nan_beside_sam_cost_the_compiling_not_the_photos(photos, caplog):
    """The group's call beside SAM ran the compiled towers: once they prove wrong, the
    group's other photos are not pooled from that call's features."""
    from usesearch.masks.sam_compile import compile_regions

    model = usesearch.load_model("tiny", device="cpu")
    masker = build_masker("felzenszwalb", usesearch.get_preset("tiny"), "cpu", max_masks=6)
    expected = compute_photos(photos, list(NAMES), model, masker, clock())
    for region in compile_regions(model.use.encoder):
        region._compiled_call_impl = lambda *a, m=region, **k: m.forward(*a, **k) * float("nan")
    model.beside.on = True
    model.beside.ran_in_line(photos)
    with caplog.at_level("WARNING"):
        got = compute_photos(photos, list(NAMES), model, masker, clock())
    for (_, vectors_a), (_, vectors_b) in zip(expected, got, strict=True):
        assert len(vectors_a) > 0
        np.testing.assert_allclose(vectors_b, vectors_a, atol=1e-6)
    assert model.towers_uncompiled and not model.beside._kept and not model._features
    assert len([r for r in caplog.records if "uncompiled" in r.getMessage()]) == 1


def test_stage_clocks_wait_for_their_own_stream_not_the_whole_device(monkeypatch):
    """SAM's clocks and the embedder's synchronise the calling thread's stream: a
    device-wide wait would also wait for the backbones running beside SAM."""
    from usesearch import devices

    waited = []
    stream = types.SimpleNamespace(synchronize=lambda: waited.append("stream"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: waited.append(device) or stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("a device-wide wait"))
    devices.synchronize(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1), "stream"]
    devices.synchronize(torch.device("cpu"))
    assert len(waited) == 2  # nothing to wait for on a CPU
