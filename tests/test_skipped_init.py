"""A model built to take a weights file skips its random init (``weights_to_come``): the
same model once loaded, and no other thread's seeded build disturbed."""

import dataclasses
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import usesearch
from usesearch.masks.sam import load_sam
from usesearch.models import backbones
from usesearch.models.backbones import build_clip, build_dino, weights_to_come
from usesearch.models.weights import dino_status


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, msg=name)
    for (name, x), y in zip(a.named_buffers(), b.buffers(), strict=True):  # the non-persistent ones too
        torch.testing.assert_close(x, y, msg=name)


def test_clip_and_sam_built_for_their_files_are_the_files_models(tmp_path):
    preset = usesearch.get_preset("tiny")
    seeded = build_clip(preset.clip, "tiny").model
    with torch.no_grad():
        for p in seeded.parameters():
            p.add_(0.5)  # not what any init draws
    file = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in seeded.state_dict().items()}, str(file))
    _same(build_clip(dataclasses.replace(preset.clip, pretrained=str(file)), "tiny").model, seeded)

    sam = load_sam(preset.sam, "tiny")
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    _same(load_sam(preset.sam, "tiny", checkpoint=tmp_path / "sam.pth"), sam)


def test_dino_built_for_its_file_is_the_files_and_a_file_short_of_a_weight_is_refused(tmp_path, monkeypatch):
    """Its init is skipped only because timm's load is strict: a file lacking a weight
    must be refused, never leave that weight as the memory held."""
    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    preset = usesearch.get_preset("tiny")
    seeded = build_dino(preset.dino, "tiny")
    with torch.no_grad():
        for p in seeded.parameters():
            p.add_(0.5)
    cfg = dataclasses.replace(preset.dino, pretrained=True)  # offline-ok: the local file written below
    file = Path(dino_status(cfg).expected)
    file.parent.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in seeded.state_dict().items()}
    save_file(state, str(file))
    _same(build_dino(cfg, "tiny"), seeded)
    save_file({k: v for k, v in state.items() if k != "blocks.3.mlp.fc1.weight"}, str(file))
    with pytest.raises(usesearch.UsesearchError, match="holds weights of another model"):
        build_dino(cfg, "tiny")


def test_no_random_init_is_drawn_and_only_in_this_thread():
    before = torch.get_rng_state()
    with weights_to_come():
        torch.nn.Linear(64, 64)
        assert torch.equal(torch.get_rng_state(), before)  # nothing drawn here
        built = []
        other = threading.Thread(target=lambda: built.append(torch.nn.Linear(64, 64)))
        other.start()
        other.join()
    assert not torch.equal(torch.get_rng_state(), before)  # ... but there: the generator is shared
    assert built[0].weight.abs().max() <= 1 / 8 and built[0].weight.std() > 0.05  # kaiming-uniform's, bound 1/sqrt(64)


def test_a_skipped_draw_fills_the_middle_so_a_rejection_loop_ends():
    """torch's trunc_normal_ redraws values outside its bounds: with the draws left as
    the memory held, it could loop for ever on out-of-range garbage."""
    with weights_to_come():
        bounded = torch.nn.init.trunc_normal_(torch.full((64, 64), 7.0), std=0.02, a=-0.04, b=0.04)
        uniform = torch.nn.init.uniform_(torch.full((8,), 7.0), 2.0, 4.0)
        method = torch.full((8,), 7.0).uniform_(-1.0, 0.0)
        normal = torch.full((8,), 7.0).normal_(0.5, 2.0)
        kaiming = torch.nn.init.kaiming_uniform_(torch.full((8, 8), 7.0))
    assert bool((bounded == 0).all()) and bool((uniform == 3).all()) and bool((method == -0.5).all())
    assert bool((normal == 0.5).all()) and bool((kaiming == 0).all())


def test_a_text_side_reads_the_text_towers_weights_alone_and_refuses_what_the_whole_model_refuses(
    tmp_path, monkeypatch
):
    """A query's text side (``text_only``) from a safetensors file: the text tower the
    whole model loads (built on the meta device, so its causal mask is made again and
    a float16 file's weights are float32, as the whole model's), its image tower never
    allocated nor read, only its shapes
    checked from the file's header; a file the whole model refuses (short of a weight,
    a text weight of another shape, another image tower: a CLIP of another patch size
    has this text tower) is refused too, never left as the memory held. A DDP-wrapped
    model's file (``module.`` names) loads, as open_clip loads it. The weights are read
    through a map opened again after each ``TEXT_READ_BYTES`` (the peak is then not every
    page read besides the copies), each read once."""
    import open_clip
    import safetensors

    preset = usesearch.get_preset("tiny")
    seeded = build_clip(preset.clip, "tiny").model
    with torch.no_grad():
        for p in seeded.parameters():
            p.add_(0.5)  # not what any init draws
    state = {k: v.contiguous() for k, v in seeded.state_dict().items()}
    whole_file, ddp_file = tmp_path / "clip.safetensors", tmp_path / "ddp" / "clip.safetensors"
    ddp_file.parent.mkdir()
    save_file(state, str(whole_file))
    save_file({f"module.{k}": v.half() for k, v in state.items()}, str(ddp_file))  # in float16, as some are
    cfg = dataclasses.replace(preset.clip, pretrained=str(whole_file))
    wholes = {
        file: build_clip(dataclasses.replace(cfg, pretrained=str(file)), "tiny", native_size=True).model
        for file in (whole_file, ddp_file)
    }
    tokens = open_clip.get_tokenizer(preset.clip.model_name)(["a red apple behind the rabbit"])
    real_open, read, opened = safetensors.safe_open, [], []

    class Recording:  # safe_open, noting each tensor read
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)
            opened.append(len(read))

        def __enter__(self):
            self.inner = self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_tensor(self, name):
            read.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    monkeypatch.setattr(backbones, "TEXT_READ_BYTES", 2**16)
    for file in (whole_file, ddp_file):
        read.clear(), opened.clear()
        text = build_clip(dataclasses.replace(cfg, pretrained=str(file)), "tiny", native_size=True, text_only=True)
        assert text.model.visual is None  # dropped before the text weights were read
        assert read and not [name for name in read if "visual." in name]  # nor were the image tower's
        assert len(read) == len(set(read)) == len(text.model.state_dict())  # each once (the mask: made, not stored)
        assert opened[0] == opened[1] == 0 and len(opened) > 3  # the header's check, then several maps
        assert {p.dtype for p in text.model.parameters()} == {torch.float32}  # as the whole model's
        assert torch.equal(text.model.attn_mask, wholes[file].attn_mask)  # a buffer no file holds
        with torch.no_grad():
            expected = wholes[file].encode_text(tokens)
            torch.testing.assert_close(text.model.encode_text(tokens), expected, rtol=0, atol=0)
    monkeypatch.setattr(safetensors, "safe_open", real_open)
    # Nothing left on the file's memory map: written over in place (as `cp` does under a
    # running server), the loaded text tower's vectors stay.
    text = build_clip(cfg, "tiny", native_size=True, text_only=True).model
    with torch.no_grad():
        before = text.encode_text(tokens)
        with open(whole_file, "r+b") as file:
            data_start = 8 + int.from_bytes(file.read(8), "little")  # past safetensors' header
            size = file.seek(0, 2)
            file.seek(data_start)
            file.write(bytes(size - data_start))
        assert torch.equal(text.encode_text(tokens), before)
    # Position embeddings of another length, which open_clip's loader resizes: loaded by both.
    grid = int((state["visual.positional_embedding"].shape[0] - 1) ** 0.5) + 1
    resized = dict(
        state,
        positional_embedding=torch.randn(
            state["positional_embedding"].shape[0] + 4, state["positional_embedding"].shape[1]
        ),
    )
    resized["visual.positional_embedding"] = torch.randn(grid * grid + 1, state["visual.positional_embedding"].shape[1])
    save_file(resized, str(whole_file))
    with torch.no_grad():
        expected = build_clip(cfg, "tiny", native_size=True).model.encode_text(tokens)
        text = build_clip(cfg, "tiny", native_size=True, text_only=True).model
        torch.testing.assert_close(text.encode_text(tokens), expected, rtol=0, atol=0)
    refused = {
        "ln_final.weight": {k: v for k, v in state.items() if k != "ln_final.weight"},  # short of a text weight
        r"\d+ weights differ, e.g. visual\.": {k: v for k, v in state.items() if not k.startswith("visual.")},  # none
        r"text_projection is \[\d+, 7\] there": dict(  # same names, other shapes
            state, text_projection=torch.zeros(state["text_projection"].shape[0], 7)
        ),
        r"visual.conv1.weight is \[\d+, 3, 3, 3\] there": dict(  # another patch size, the same text tower
            state, **{"visual.conv1.weight": torch.zeros(*state["visual.conv1.weight"].shape[:2], 3, 3)}
        ),
    }
    for detail, weights in refused.items():
        save_file(weights, str(whole_file))
        with pytest.raises(usesearch.UsesearchError, match=f"holds weights of another model.*{detail}"):
            build_clip(cfg, "tiny", native_size=True, text_only=True)
        with pytest.raises(usesearch.UsesearchError, match="holds weights of another model"):
            build_clip(cfg, "tiny", native_size=True)  # the whole model refuses it too
