"""SAM model registry: segment-anything's own classes at the official sizes, plus a
tiny one (small encoder *and* decoder) with seeded random weights for tests.

Checkpoints are loaded here rather than by ``segment_anything.build_sam`` because
that calls ``torch.load`` without ``weights_only=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .backbones import seeded
from .config import SamConfig
from .errors import UsesearchError
from .weights import require, sam_status, verify_sha256


@dataclass(frozen=True)
class SamArchitecture:
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


# The official three, as in segment_anything.build_sam, and a tiny one.
SAM_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "tiny": SamArchitecture(
        32, 2, 2, (1,), image_size=256, window_size=4,
        prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
    ),
}


def build_sam_architecture(arch: SamArchitecture) -> Sam:
    grid = arch.image_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(
    cfg: SamConfig,
    preset_name: str,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> Sam:
    """SAM for a preset: its checkpoint from ``checkpoint`` or ``$USESEARCH_HOME``
    (SHA-256 checked when it is the official file), or seeded random for tiny."""
    arch = SAM_ARCHITECTURES[cfg.model_type]
    status = sam_status(cfg, checkpoint)
    if not status.needed:
        with seeded(cfg.seed):
            return build_sam_architecture(arch).to(device)
    path = require(status, preset_name)
    if checkpoint is None:
        verify_sha256(path, cfg.sha256)
    sam = build_sam_architecture(arch)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
    except Exception as exc:
        raise UsesearchError(f"{path} is not a SAM {cfg.model_type} checkpoint: {exc}") from None
    return sam.to(device)
