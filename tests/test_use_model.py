"""Paper §3.2 pinned on the tiny preset: blocks used, LLNs, z layout, frozen backbones."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import usesearch
from usesearch.models.encoder import LLN


@pytest.fixture(scope="module")
def use():
    return usesearch.create_use("tiny")


@pytest.fixture(scope="module")
def pixels(use, request):
    from skimage import data

    rgb = np.ascontiguousarray(data.coffee()[::4, ::4])
    clip_px, dino_px = use.pixels(rgb)
    return clip_px[None], dino_px[None]


def _block_outputs(blocks: nn.ModuleList, run) -> list[torch.Tensor]:
    """Capture every block's output with hooks: an independent view of the backbone."""
    captured = []
    handles = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return captured


def test_one_lln_per_clip_block_and_per_last_six_dino_blocks(use):
    enc = use.encoder
    m, n = len(enc.clip_visual.transformer.resblocks), len(enc.dino.blocks)
    assert (m, n) == (3, 7)  # tiny: 7 DINOv2 blocks so "last 6" excludes one
    assert enc.clip_block_indices == list(range(m))
    assert enc.dino_block_indices == list(range(n - 6, n)) == [1, 2, 3, 4, 5, 6]
    assert len(enc.clip_llns) == m and len(enc.dino_llns) == 6
    assert enc.alpha.shape == (m,) and enc.beta.shape == (6,)
    for lln in [*enc.clip_llns, *enc.dino_llns]:
        assert isinstance(lln, LLN)
        assert isinstance(lln[0], nn.LayerNorm) and isinstance(lln[1], nn.Linear)  # LN then Linear


def test_backbone_tokens_are_the_selected_blocks(use, pixels):
    clip_px, dino_px = pixels
    tokens = use.backbone_tokens(clip_px, dino_px)
    clip_out = _block_outputs(use.encoder.clip_visual.transformer.resblocks, lambda: use.encoder.clip_visual(clip_px))
    dino_out = _block_outputs(use.encoder.dino.blocks, lambda: use.encoder.dino(dino_px))
    assert tokens.clip_blocks.shape[1] == 3 and tokens.dino_blocks.shape[1] == 6
    for i, out in enumerate(clip_out):  # patch tokens follow the one cls token
        torch.testing.assert_close(tokens.clip_blocks[:, i], out[:, 1:])
    for j, block in enumerate([1, 2, 3, 4, 5, 6]):
        torch.testing.assert_close(tokens.dino_blocks[:, j], dino_out[block][:, 1:])
    # cls embeddings: CLIP's image embedding, DINOv2's normed cls token.
    with torch.no_grad():
        torch.testing.assert_close(tokens.clip_cls, use.encoder.clip_visual(clip_px))
        torch.testing.assert_close(tokens.dino_cls, use.encoder.dino.forward_features(dino_px)[:, 0])


def test_z_is_concat_of_merged_clip_cls_merged_dino_cls(use, pixels):
    enc = use.encoder
    with torch.no_grad():
        enc.alpha.copy_(torch.tensor([0.2, -0.5, 1.5]))  # non-uniform: the sum must weight by α
        tokens = use.backbone_tokens(*pixels)
        z = enc.merge(tokens)
        c_bar = sum(enc.alpha[i] * enc.clip_llns[i](tokens.clip_blocks[:, i]) for i in range(3))
        d_bar = sum(enc.beta[i] * enc.dino_llns[i](tokens.dino_blocks[:, i]) for i in range(6))
        enc.alpha.fill_(1 / 3)
    lln, e, d = use.preset.head.lln_dim, tokens.clip_cls.shape[-1], tokens.dino_cls.shape[-1]
    assert z.shape == (1, use.preset.grid**2, 2 * lln + e + d) == (1, 64, enc.out_dim)
    torch.testing.assert_close(z[..., :lln], c_bar)
    torch.testing.assert_close(z[..., lln : lln + e], tokens.clip_cls[:, None].expand(-1, 64, -1))
    torch.testing.assert_close(z[..., lln + e : 2 * lln + e], d_bar)
    torch.testing.assert_close(z[..., 2 * lln + e :], tokens.dino_cls[:, None].expand(-1, 64, -1))


def test_only_llns_block_scales_and_projection_train(use):
    trainable = {n for n, p in use.named_parameters() if p.requires_grad}
    expected = {
        n for n, _ in use.named_parameters() if n.startswith(("encoder.clip_llns", "encoder.dino_llns", "head.proj"))
    }
    expected |= {"encoder.alpha", "encoder.beta"}
    assert trainable == expected
    assert set(use.trainable_state_dict()) == expected
    frozen = [p for n, p in use.named_parameters() if n.startswith(("encoder.clip_visual", "encoder.dino."))]
    assert len(frozen) > 10 and not any(p.requires_grad for p in frozen)


def test_backbones_stay_frozen_and_in_eval_during_training(use, pixels):
    use.train()
    assert not use.encoder.clip_visual.training and not use.encoder.dino.training
    assert use.encoder.clip_llns.training
    tokens = use.backbone_tokens(*pixels)
    weights = torch.rand(4, use.preset.grid**2)
    out = use(tokens, weights, torch.zeros(4, dtype=torch.long))
    out.sum().backward()
    frozen = {n: p for n, p in use.named_parameters() if n.startswith(("encoder.clip_visual", "encoder.dino."))}
    assert len(frozen) > 10
    assert [name for name, p in frozen.items() if p.grad is not None] == []
    assert use.encoder.alpha.grad is not None and use.encoder.beta.grad is not None
    assert use.head.proj.weight.grad is not None
    use.zero_grad(set_to_none=True)
    use.eval()


def test_head_is_weighted_average_then_linear_then_l2(use):
    torch.manual_seed(0)
    z = torch.randn(2, 64, use.encoder.out_dim)
    weights = torch.rand(3, 64)
    image_index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        got = use.head(z, weights, image_index)
        ref = torch.stack([(weights[k] @ z[image_index[k]]) / weights[k].sum() for k in range(3)])
        ref = F.normalize(use.head.proj(ref), dim=-1)
    torch.testing.assert_close(got, ref)
    assert got.shape[1] == 32  # CLIP joint space of the tiny preset


def test_grids_align_for_every_preset():
    for preset in usesearch.PRESETS.values():
        assert preset.clip.image_size // preset.clip.patch_size == preset.dino.image_size // preset.dino.patch_size
    assert usesearch.get_preset("b16").grid == 24  # 384/16 == 336/14
    assert usesearch.get_preset("l14-336").grid == 40  # 560/14, the paper's training crop
    assert usesearch.get_preset("tiny").grid == 8  # 128/16 == 112/14
    from dataclasses import replace

    bad = replace(usesearch.get_preset("b16"), dino=replace(usesearch.get_preset("b16").dino, image_size=378))
    with pytest.raises(ValueError, match="align"):
        bad.validate()


def test_paper_presets_name_the_paper_backbones():
    p = usesearch.get_preset("l14-336")
    assert (p.clip.model_name, p.clip.pretrained) == ("ViT-L-14-336", "openai")
    assert p.dino.timm_name == "vit_large_patch14_dinov2.lvd142m" and p.dino.last_blocks == 6
    assert p.sam.model_type == "vit_h" and p.sam.checkpoint == "sam_vit_h_4b8939.pth"
    # §4.2: the model sees the 560-px training crop, a 40x40 grid of /14 patches in both backbones.
    assert (p.clip.image_size, p.dino.image_size, p.clip.patch_size, p.dino.patch_size) == (560, 560, 14, 14)
    b = usesearch.get_preset("b16")
    assert (b.clip.model_name, b.dino.timm_name, b.sam.model_type) == (
        "ViT-B-16",
        "vit_base_patch14_dinov2.lvd142m",
        "vit_b",
    )


def letterbox_as_it_was(rgb, side, mean, std, canvas=None):
    """The letterbox ``USE.pixels`` replaced (per backbone, all on the CPU), verbatim."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = side / (canvas or max(h, w))
    new_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = np.array(Image.fromarray(rgb).resize(new_hw[::-1], Image.Resampling.BICUBIC))
    tensor = torch.from_numpy(small).permute(2, 0, 1).float().div_(255)
    out = torch.zeros(3, side, side)
    out[:, : new_hw[0], : new_hw[1]] = (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return out


@pytest.mark.parametrize("preset", ["tiny", "l14-336", "b16"])
def test_pixels_resize_once_per_size_and_equal_letterbox_per_backbone(preset, monkeypatch):
    """``USE.pixels`` resizes the photo once per distinct backbone size (l14-336's two
    are both 560 px) and normalises where the model runs; the inputs are exactly those
    of letterboxing the photo for each backbone, as before."""
    from types import SimpleNamespace

    from skimage import data

    from usesearch.models import inputs, model
    from usesearch.models.presets import get_preset

    config = get_preset(preset)
    use = SimpleNamespace(
        preset=config,
        clip_mean_std=((0.48, 0.46, 0.41), (0.27, 0.26, 0.28)),
        dino_mean_std=((0.485,) * 3, (0.229,) * 3),
    )
    for name in ("resize_for_backbones", "pixels_from"):  # the USE methods ``pixels`` calls, on this stand-in
        setattr(use, name, getattr(model.USE, name).__get__(use))
    rgb = np.ascontiguousarray(data.astronaut()[::2, ::3])
    calls = []
    monkeypatch.setattr(model, "resized", lambda *a, **k: calls.append(a[1]) or inputs.resized(*a, **k))
    clip_px, dino_px = model.USE.pixels(use, rgb)
    assert sorted(calls) == sorted({config.clip.image_size, config.dino.image_size})
    assert torch.equal(clip_px, letterbox_as_it_was(rgb, config.clip.image_size, *use.clip_mean_std))
    assert torch.equal(dino_px, letterbox_as_it_was(rgb, config.dino.image_size, *use.dino_mean_std))
    with_canvas = model.USE.pixels(use, rgb, canvas=600)[1]
    assert torch.equal(with_canvas, letterbox_as_it_was(rgb, config.dino.image_size, *use.dino_mean_std, canvas=600))
    assert torch.equal(
        inputs.letterbox(rgb, 224, *use.clip_mean_std), letterbox_as_it_was(rgb, 224, *use.clip_mean_std)
    )


def test_photos_prepared_while_sam_runs_embed_as_photos_resized_in_line(tiny_use, monkeypatch):
    """``prepare`` resizes a group's photos for the backbones in the embedder's own
    thread (on a GPU, while SAM runs; in line, the card waited on PIL): the same
    embeddings, and a photo nobody prepared is resized where it is embedded."""
    import threading

    from skimage import data

    photos = [np.ascontiguousarray(data.coffee()[::4, ::4]), np.ascontiguousarray(data.astronaut()[::4, ::4])]
    masks = [np.zeros(p.shape[:2], bool)[None].repeat(2, 0) for p in photos]
    for m in masks:
        m[0, 10:40, 20:70], m[1, 30:, :50] = True, True
    in_line = [tiny_use.embed_segments(p, m) for p, m in zip(photos, masks)]
    resized_on, real = [], tiny_use.use.resize_for_backbones
    monkeypatch.setattr(
        tiny_use.use,
        "resize_for_backbones",
        lambda rgb, canvas=None: resized_on.append(threading.current_thread().name) or real(rgb, canvas),
    )
    tiny_use.prepare(photos[:1])
    prepared = [tiny_use.embed_segments(p, m) for p, m in zip(photos, masks)]
    for a, b in zip(prepared, in_line):
        np.testing.assert_array_equal(a, b)
    assert resized_on[0].startswith("usesearch-resize") and resized_on[1] == threading.current_thread().name
    assert not tiny_use._prepared  # taken as it was used
