"""``load_model``: one entry point from a preset name or head checkpoint to an embedder."""

from __future__ import annotations

import os

import torch

from usesearch.devices import resolve_device, uses_bf16
from usesearch.errors import NoTrainedHeadError, UsesearchError
from usesearch.models.backbones import Clip, build_clip, build_dino, seeded
from usesearch.models.checkpoint import is_checkpoint, load_head, read_head_config, state_digest
from usesearch.models.config import PresetConfig
from usesearch.models.model import USE, CropEmbedder, TextModel, USEEmbedder, crop_fingerprint, use_fingerprint
from usesearch.models.presets import (
    DEFAULT_PRESET,
    PRESETS,
    check_preset_name,
    get_preset,
    refuse_unknown,
)


def choose_preset(preset: str | None, head: str | os.PathLike | None = None) -> str:
    """The preset a command runs: the one asked for, else the head checkpoint's own,
    else ``DEFAULT_PRESET``."""
    if preset:
        return preset
    if head is not None:
        return read_head_config(head)["preset"]
    return DEFAULT_PRESET


def create_use(preset: PresetConfig | str) -> USE:
    """A USE module with a freshly initialised (seeded) head, for training or tests.
    Inference goes through ``load_model``, which never hands out an untrained head
    except the tiny preset's documented random one."""
    return create_use_and_clip(preset)[0]


def create_use_and_clip(preset: PresetConfig | str) -> tuple[USE, Clip]:
    """Also returns the CLIP it was built on, whose text tower training needs."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    clip = build_clip(preset.clip, preset.name)
    dino = build_dino(preset.dino, preset.name)
    with seeded(preset.head.seed):
        return USE(preset, clip, dino), clip


def load_model(
    name_or_checkpoint: str | os.PathLike,
    embedder: str | None = "use",
    device: str | torch.device | None = None,
    head: str | os.PathLike | None = None,
    precision: str = "auto",
) -> USEEmbedder | CropEmbedder:
    """A preset name (``tiny``, ``b16``, ``l14-336``) or a head checkpoint -> embedder.

    ``embedder="use"`` needs a trained head: from ``head=``, from the checkpoint
    given as first argument, or the tiny preset's seeded random one.
    ``embedder="crop"`` needs only CLIP. ``precision``: the image towers' (``auto``:
    bfloat16 on a GPU that has it, float32 elsewhere; ``usesearch.devices.uses_bf16``).
    """
    device = resolve_device(device)
    uses_bf16(device, precision)  # an impossible precision refused before any weights are read
    embedder = embedder or "use"  # None: the default, as IndexOptions takes it
    preset, head = _preset_and_head(name_or_checkpoint, embedder, head)
    if embedder == "crop":
        return CropEmbedder(preset, build_clip(preset.clip, preset.name, native_size=True), device, precision=precision)
    state = load_head(head, preset)[0] if head is not None else None
    use, clip = create_use_and_clip(preset)
    if state is not None:
        trainable = use.trainable_state_dict()
        # Exactly the head's weights: a frozen backbone weight in it would overwrite CLIP's or
        # DINOv2's here, and ``load_text_model``, which never builds them, would name it otherwise.
        missing, unexpected = sorted(set(trainable) - set(state)), sorted(set(state) - set(trainable))
        if missing or unexpected:
            raise UsesearchError(
                f"head checkpoint {head} does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        use.load_state_dict(state, strict=False)
    # The checkpoint's own weights identify it, as ``load_text_model`` reads them.
    digest = state_digest(state if state is not None else use.trainable_state_dict())
    return USEEmbedder(use, clip, device, digest, precision)


def load_text_model(
    name_or_checkpoint: str | os.PathLike,
    embedder: str | None = "use",
    device: str | torch.device | None = None,
    head: str | os.PathLike | None = None,
) -> TextModel | USEEmbedder:
    """``load_model``'s text side alone, under the same fingerprint: what a query by text
    or by class names needs, built and held without DINOv2 or CLIP's image tower (a text
    query on ``l14-336`` reads 1.7 GB of weights instead of 2.9). Tiny's seeded random
    head is known only by building it: there, the whole (tiny) model."""
    device = resolve_device(device)
    embedder = embedder or "use"
    preset, head = _preset_and_head(name_or_checkpoint, embedder, head)
    if text_needs_whole_model(embedder, head):
        model = load_model(preset.name, embedder="use", device=device)
        assert isinstance(model, USEEmbedder)
        return model
    if embedder == "use":
        assert head is not None  # (``text_needs_whole_model`` took a USE embedder without one)
        fingerprint = use_fingerprint(preset, state_digest(load_head(head, preset)[0]))
    # At its native size: the size changes only the image tower, which is dropped.
    clip = build_clip(preset.clip, preset.name, native_size=True, text_only=True)
    if embedder == "crop":
        fingerprint = crop_fingerprint(preset, clip.native_image_size)
    return TextModel(preset, embedder, fingerprint, clip, device)


def text_needs_whole_model(embedder: str | None, head: str | os.PathLike | None) -> bool:
    """Whether the text side is known only by building the whole model: a USE embedder
    without a head checkpoint has tiny's seeded random head, whose digest is its init's."""
    return (embedder or "use") == "use" and head is None


def _preset_and_head(
    name_or_checkpoint: str | os.PathLike, embedder: str, head: str | os.PathLike | None
) -> tuple[PresetConfig, str | os.PathLike | None]:
    """The preset a model is built on and its head checkpoint (given, or the first
    argument when that is one), refusing an unknown embedder, preset or missing head."""
    name = str(name_or_checkpoint)
    if embedder == "crop" and head is not None:  # recorded with an index, then required, never used
        raise UsesearchError(
            f"--embedder crop embeds each segment's crop with CLIP alone and uses no head: leave out --head {head}, "
            "or give --embedder use"
        )
    if name not in PRESETS and is_checkpoint(name):
        if embedder == "crop":  # the head it names would never be used
            raise UsesearchError(
                f"--embedder crop embeds each segment's crop with CLIP alone and uses no head: {name} is a head "
                f"checkpoint; give its preset ({read_head_config(name)['preset']}), or --embedder use"
            )
        head = head or name
        name = read_head_config(name)["preset"]
    else:
        check_preset_name(name)
    preset = get_preset(name)
    refuse_unknown(None, embedder)
    if embedder == "use" and head is None and not preset.head.seeded_random:
        raise NoTrainedHeadError(
            f"preset {preset.name!r} has no trained USE head (none is published). Either use the "
            "training-free embedder (`--embedder crop`, or embedder='crop'), or train a head with "
            f"`usesearch train ... --preset {preset.name}` and pass it with `--head CHECKPOINT`."
        )
    return preset, head
