"""Public API: load_model -> embed_segments / embed_text / fingerprint."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import usesearch
from usesearch.models.text import TextEncoder


def test_embed_segments_gives_unit_float32_rows(tiny_use, photo, photo_masks):
    out = tiny_use.embed_segments(photo, photo_masks)
    assert out.dtype == np.float32 and out.shape == (3, tiny_use.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    assert not np.allclose(out[0], out[1])  # different masks, different vectors


def test_pil_and_array_inputs_agree_and_any_size_works(tiny_use, photo, photo_masks):
    a = tiny_use.embed_segments(photo, photo_masks)
    b = tiny_use.embed_segments(Image.fromarray(photo), photo_masks)
    np.testing.assert_allclose(a, b, atol=1e-6)
    wide = np.zeros((37, 201, 3), np.uint8)
    mask = np.zeros((1, 37, 201), bool)
    mask[0, 5:20, 100:150] = True
    assert tiny_use.embed_segments(wide, mask).shape == (1, tiny_use.dim)


def test_a_pil_photo_is_converted_to_an_array_once(tiny_use, photo, photo_masks, monkeypatch):
    from usesearch.models import model

    pil_calls = []
    original = model.to_rgb_array
    monkeypatch.setattr(
        model, "to_rgb_array", lambda image: pil_calls.append(isinstance(image, Image.Image)) or original(image)
    )
    expected = tiny_use.embed_segments(photo, photo_masks)
    pil_calls.clear()
    np.testing.assert_allclose(tiny_use.embed_segments(Image.fromarray(photo), photo_masks), expected, atol=1e-6)
    assert pil_calls.count(True) == 1


def test_an_empty_list_of_masks_is_no_masks(tiny_use, tiny_crop, photo):
    for model in (tiny_use, tiny_crop):
        assert model.embed_segments(photo, []).shape == (0, model.dim)
        assert model.embed_segments(photo, np.zeros((0, *photo.shape[:2]), bool)).shape == (0, model.dim)


def test_load_model_takes_no_embedder_as_the_default_one(tiny_use):
    """As IndexOptions does (None: choose), not "unknown embedder None"."""
    assert usesearch.load_model("tiny", embedder=None).fingerprint == tiny_use.fingerprint


def test_image_encoder_runs_once_per_image(tiny_use, photo, photo_masks, monkeypatch):
    calls = []
    original = tiny_use.use.encoder.forward
    monkeypatch.setattr(tiny_use.use.encoder, "forward", lambda *a: calls.append(1) or original(*a))
    many = np.repeat(photo_masks, 10, axis=0)
    tiny_use.embed_segments(photo, many)
    assert len(calls) == 1


def test_bad_masks_are_clear_errors(tiny_use, tiny_crop, photo, photo_masks):
    with pytest.raises(ValueError, match="like the image"):
        tiny_use.embed_segments(photo, photo_masks[:, :10])
    empty = photo_masks.copy()
    empty[1] = False
    for model in (tiny_use, tiny_crop):
        with pytest.raises(ValueError, match="empty"):
            model.embed_segments(photo, empty)
    assert tiny_use.embed_segments(photo, photo_masks[:0]).shape == (0, tiny_use.dim)


def test_expression_templates_are_the_papers_four():
    assert usesearch.EXPRESSION_TEMPLATES == (
        "a photo of {}",
        "This is a photo of {}",
        "There is {} in the scene",
        "a photo of {} in the scene",
    )
    assert len(usesearch.CLASSNAME_TEMPLATES) == 14 and "a photo of a {}." in usesearch.CLASSNAME_TEMPLATES


def test_text_embedding_is_normalised_mean_over_templates(tiny_use):
    got = tiny_use.embed_text(["red apple behind the rabbit"])[0]
    clip = tiny_use.text.model
    tokens = tiny_use.text.tokenizer([t.format("red apple behind the rabbit") for t in usesearch.EXPRESSION_TEMPLATES])
    with torch.no_grad():
        per = F.normalize(clip.encode_text(tokens), dim=-1)
    ref = F.normalize(per.mean(0), dim=-1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    classes = tiny_use.embed_classes(["rabbit"])
    assert not np.allclose(classes, tiny_use.embed_text(["rabbit"]))  # other template set


def test_text_embeddings_are_cached(tiny_use, monkeypatch):
    text = TextEncoder(tiny_use.text.model, tiny_use.text.tokenizer, torch.device("cpu"))
    prompts = []
    original = text._encode_prompts
    monkeypatch.setattr(text, "_encode_prompts", lambda p: prompts.extend(p) or original(p))
    first = text.embed(["a cat", "a dog"])
    second = text.embed(["a dog", "a cat", "a dog"])
    assert len(prompts) == 2 * 4  # each text encoded once, under four templates
    np.testing.assert_array_equal(second[1], first[0])
    with pytest.raises(ValueError, match="empty"):
        text.embed([" "])


def test_tiny_is_deterministic_across_builds_and_processes(tiny_use, photo, photo_masks):
    again = usesearch.load_model("tiny", device="cpu")
    assert again.fingerprint == tiny_use.fingerprint
    np.testing.assert_array_equal(again.embed_segments(photo, photo_masks), tiny_use.embed_segments(photo, photo_masks))
    code = (
        "import usesearch; m = usesearch.load_model('tiny', device='cpu'); "
        "print(m.fingerprint, float(m.embed_text(['x'])[0, 0]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == tiny_use.fingerprint
    assert float(out[1]) == pytest.approx(float(tiny_use.embed_text(["x"])[0, 0]), abs=1e-6)


def test_fingerprint_separates_embedding_spaces(tiny_use, tiny_crop):
    assert tiny_use.fingerprint != tiny_crop.fingerprint
    assert tiny_use.fingerprint.startswith("use-tiny-") and tiny_crop.fingerprint.startswith("crop-tiny-")


def test_crop_ignores_pixels_outside_the_mask_but_inside_its_box(tiny_crop, photo):
    mask = np.zeros(photo.shape[:2], bool)
    mask[20:60, 20:60] = True
    mask[20:30, 20:30] = False  # a notch inside the box, outside the mask
    base = tiny_crop.embed_segments(photo, mask[None])
    outside = photo.copy()
    outside[20:30, 20:30] = 255 - outside[20:30, 20:30]
    outside[100:, 100:] = 0
    np.testing.assert_allclose(tiny_crop.embed_segments(outside, mask[None]), base, atol=1e-6)
    inside = photo.copy()
    inside[40:60, 40:60] = 255 - inside[40:60, 40:60]
    assert not np.allclose(tiny_crop.embed_segments(inside, mask[None]), base, atol=1e-4)


def test_use_and_crop_share_the_text_space(tiny_use, tiny_crop):
    np.testing.assert_allclose(tiny_use.embed_text(["a rabbit"]), tiny_crop.embed_text(["a rabbit"]), atol=1e-6)
    assert tiny_use.dim == tiny_crop.dim


def test_rle_masks_embed_as_their_dense_masks(tiny_use, photo, photo_masks):
    """The indexer hands SAM's RLEs to the embedder undecoded; the vectors are those
    of the dense masks, for the USE head and the crop baseline alike."""
    from usesearch.masks import rle

    as_rle = rle.RleStack(rle.encode_stack(photo_masks), photo.shape[:2])
    np.testing.assert_allclose(
        tiny_use.embed_segments(photo, as_rle), tiny_use.embed_segments(photo, photo_masks), atol=1e-5
    )
    crop = usesearch.load_model("tiny", embedder="crop")
    np.testing.assert_allclose(crop.embed_segments(photo, as_rle), crop.embed_segments(photo, photo_masks), atol=1e-6)
    with pytest.raises(ValueError, match="like the image"):
        tiny_use.embed_segments(photo[:50], as_rle)
