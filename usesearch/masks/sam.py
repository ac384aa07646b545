"""SAM for a preset: segment-anything's registry builds the official sizes, a tiny
one (small encoder *and* decoder) with seeded random weights serves tests.

Checkpoints are loaded here rather than by ``segment_anything.build_sam`` because
that calls ``torch.load`` without ``weights_only=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from usesearch.errors import MissingWeightsError, UsesearchError, first_line
from usesearch.masks.sam_fast import speed_up
from usesearch.models.backbones import seeded, weights_to_come
from usesearch.models.config import SamConfig
from usesearch.models.weights import UNREADABLE, remembered_sha256, require, sam_status, verify_sha256

SAM_TYPES = ("vit_h", "vit_l", "vit_b", "tiny")


@dataclass(frozen=True)
class _TinySam:
    """The tiny SAM: small encoder *and* decoder, 256-px input; seeded random weights."""

    embed_dim: int = 32
    depth: int = 2
    heads: int = 2
    global_attn: tuple[int, ...] = (1,)
    image_size: int = 256
    patch_size: int = 16
    window_size: int = 4
    prompt_dim: int = 32
    decoder_mlp_dim: int = 64
    decoder_heads: int = 2
    iou_hidden: int = 32


TINY = _TinySam()


def build_sam(model_type: str) -> Sam:
    """A SAM of this type with freshly initialised weights: the official three from
    segment-anything's own registry (with no checkpoint, so it loads nothing), the
    tiny one built here from segment-anything's classes."""
    if model_type == "tiny":
        return _build_tiny()
    if model_type not in SAM_TYPES:
        raise UsesearchError(f"unknown SAM type {model_type!r}; choose one of {', '.join(SAM_TYPES)}")
    return sam_model_registry[model_type](checkpoint=None).eval()


def _build_tiny() -> Sam:
    t = TINY
    grid = t.image_size // t.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=t.depth,
            embed_dim=t.embed_dim,
            img_size=t.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=t.heads,
            patch_size=t.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=t.global_attn,
            window_size=t.window_size,
            out_chans=t.prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=t.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(t.image_size, t.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=t.prompt_dim, mlp_dim=t.decoder_mlp_dim, num_heads=t.decoder_heads
            ),
            transformer_dim=t.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=t.iou_hidden,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def sam_identity(cfg: SamConfig, checkpoint: str | os.PathLike | None = None) -> str:
    """Which SAM weights these are, as a dataset records them: the official file's
    SHA-256 (checked on load), a file of the user's hashed, or the seed of random ones."""
    if checkpoint is not None:
        return f"sam {cfg.model_type} sha256:{remembered_sha256(Path(checkpoint))}"
    if not sam_status(cfg).needed:
        return f"sam {cfg.model_type} random seed {cfg.seed}"
    return f"sam {cfg.model_type} sha256:{cfg.sha256 or cfg.checkpoint}"


def load_sam(
    cfg: SamConfig,
    preset_name: str,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> Sam:
    """SAM for a preset: its checkpoint from ``checkpoint`` or ``$USESEARCH_HOME``
    (SHA-256 checked when it is the official file), or seeded random for tiny. It
    runs ``sam_fast``'s levers: SDPA attention in the image encoder (twice as fast on
    a CPU's global blocks) and image tokens shared across prompts in the decoder
    (a fifth fewer FLOPs); the same masks as segment-anything's code."""
    status = sam_status(cfg, checkpoint)
    if not status.needed:
        with seeded(cfg.seed):
            return speed_up(build_sam(cfg.model_type)).to(device)
    if checkpoint is not None and status.path is None:  # the file named, not the preset's: no pull brings it
        raise MissingWeightsError(f"--sam-checkpoint {checkpoint}: no such file")
    if checkpoint is not None and status.fault not in (None, UNREADABLE):  # the user's own file: no pull mends it
        raise UsesearchError(
            f"--sam-checkpoint {checkpoint} is damaged ({status.fault}): give a whole SAM {cfg.model_type} checkpoint"
        )
    path = require(status, preset_name)
    if checkpoint is None:
        verify_sha256(path, cfg.sha256)
    with weights_to_come():  # the strict load below sets every parameter
        sam = build_sam(cfg.model_type)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsesearchError(
            f"{path} is not a SAM checkpoint (torch cannot read it: {type(exc).__name__}: {first_line(exc)})"
        ) from None
    try:
        sam.load_state_dict(state)
    except Exception as exc:
        raise UsesearchError(
            f"{path} is not a SAM {cfg.model_type} checkpoint (preset {preset_name!r} builds SAM {cfg.model_type}): "
            f"{first_line(exc)}"
        ) from None
    return speed_up(sam).to(device)
