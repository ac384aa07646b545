"""A group's photos through the backbones in one call (``USEEmbedder.features_ahead``,
on by default on a GPU only), checked on the CPU against one call a photo."""

import types

import numpy as np
import pytest
import torch
from skimage import data

import usesearch
from indexer.compute import compute_photos
from usesearch.masks.maskers import build_masker
from usesearch.models import model as model_module

NAMES = ("astronaut", "chelsea", "coffee")


@pytest.fixture(scope="module")
def photos():
    return [np.ascontiguousarray(getattr(data, name)()[::4, ::4]) for name in NAMES]


def clock():
    return types.SimpleNamespace(masker_seconds=0.0, model_seconds=0.0)


def test_batching_is_on_by_default_for_a_gpu_alone():
    assert model_module.batches_backbones(torch.device("cuda", 0))
    assert not model_module.batches_backbones(torch.device("cpu"))


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
    for (rows_a, vectors_a), (rows_b, vectors_b) in zip(single, batched):
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
    for (rows_a, vectors_a), (rows_b, vectors_b) in zip(expected, got):
        assert rows_a == rows_b
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
