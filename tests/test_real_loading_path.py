"""The real-weights code path, offline: checkpoints written at one resolution are
loaded from the local-file locations at the preset's resolution, so open_clip and
timm must resize positional embeddings exactly as they will for hub weights."""

from dataclasses import replace

import numpy as np
import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

import usesearch
from usesearch.models.backbones import build_clip, build_dino
from usesearch.models.model import USE
from usesearch.models.presets import TINY_CLIP_NAME


@pytest.fixture()
def local_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    tiny = usesearch.get_preset("tiny")
    build_clip(tiny.clip, "tiny")  # registers the tiny open_clip config
    torch.manual_seed(11)
    clip = open_clip.create_model(TINY_CLIP_NAME, pretrained=None, force_image_size=64)  # a 4x4-grid checkpoint
    clip_file = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_file))
    dino = timm.create_model(tiny.dino.timm_name, pretrained=False, img_size=56, num_classes=0, **tiny.dino.overrides)
    (tmp_path / "weights").mkdir()
    save_file(dino.state_dict(), str(tmp_path / "weights" / f"{tiny.dino.timm_name}.safetensors"))
    # offline-ok: "pretrained" here means the local files written above
    preset = replace(
        tiny, clip=replace(tiny.clip, pretrained=str(clip_file)), dino=replace(tiny.dino, pretrained=True)
    )  # offline-ok
    return preset, clip, dino


def test_local_files_load_and_positional_embeddings_are_resized(local_weights):
    preset, saved_clip, saved_dino = local_weights
    clip = build_clip(preset.clip, "custom")
    dino = build_dino(preset.dino, "custom")
    torch.testing.assert_close(clip.model.visual.conv1.weight, saved_clip.visual.conv1.weight)
    torch.testing.assert_close(dino.blocks[3].mlp.fc1.weight, saved_dino.blocks[3].mlp.fc1.weight)
    assert clip.model.visual.positional_embedding.shape[0] == 1 + 8 * 8  # 4x4 -> 8x8 grid
    assert not clip.model.visual.training and not any(p.requires_grad for p in dino.parameters())
    use = USE(preset, clip, dino)
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    z = use.encoder(*(p[None] for p in use.pixels(rgb)))
    assert z.shape == (1, 64, use.encoder.out_dim) and torch.isfinite(z).all()
