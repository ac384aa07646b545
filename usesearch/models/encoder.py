"""USE image encoder (paper §3.2): multi-level CLIP + DINOv2 patch features.

z = [c̄, ĉ, d̄, d̂] per patch, where c̄ = Σ_i α_i·LLN_i(c^i) over *all* CLIP blocks,
d̄ = Σ_i β_i·LLN_i(d^i) over the *last 6* DINOv2 blocks, and ĉ, d̂ are the two
backbones' cls embeddings broadcast to every patch. Backbones stay frozen; the
LLNs and the block scales are the encoder's only trainable parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    # open_clip is untyped (Any to mypy); timm's DINOv2 is its typed VisionTransformer.
    from open_clip.transformer import VisionTransformer as ClipVisionTower
    from timm.models.vision_transformer import VisionTransformer as DinoTower


class LLN(nn.Sequential):
    """LayerNorm then Linear, the block aligner of COMM that the paper reuses."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))


@dataclass
class BackboneTokens:
    """Frozen-backbone outputs for a batch; cacheable, since they never get gradients."""

    clip_blocks: torch.Tensor  # [B, m, P, C_clip]  patch tokens of every CLIP block
    clip_cls: torch.Tensor  # [B, E]  CLIP image embedding (cls token, ln_post, proj)
    dino_blocks: torch.Tensor  # [B, l, P, C_dino]  patch tokens of the last l DINOv2 blocks
    dino_cls: torch.Tensor  # [B, C_dino]  normed DINOv2 cls token


class USEImageEncoder(nn.Module):
    def __init__(self, clip_visual: ClipVisionTower, dino: DinoTower, lln_dim: int, dino_last_blocks: int = 6):
        super().__init__()
        self.clip_visual = clip_visual
        self.dino = dino
        m = len(clip_visual.transformer.resblocks)
        n = len(dino.blocks)
        if not 0 < dino_last_blocks <= n:
            raise ValueError(f"cannot take the last {dino_last_blocks} of {n} DINOv2 blocks")
        self.clip_block_indices = list(range(m))
        self.dino_block_indices = list(range(n - dino_last_blocks, n))
        clip_width = clip_visual.transformer.width
        dino_width = dino.embed_dim
        clip_embed = clip_visual.output_dim
        self.clip_llns = nn.ModuleList(LLN(clip_width, lln_dim) for _ in range(m))
        self.dino_llns = nn.ModuleList(LLN(dino_width, lln_dim) for _ in range(dino_last_blocks))
        # Uniform start: the merge begins as a plain average of the aligned blocks.
        self.alpha = nn.Parameter(torch.full((m,), 1.0 / m))
        self.beta = nn.Parameter(torch.full((dino_last_blocks,), 1.0 / dino_last_blocks))
        self.out_dim = 2 * lln_dim + clip_embed + dino_width
        self._freeze_backbones()

    def _freeze_backbones(self) -> None:
        for backbone in (self.clip_visual, self.dino):
            backbone.eval()
            backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> USEImageEncoder:
        super().train(mode)
        self._freeze_backbones()  # dropout/droppath in a backbone must never switch on
        return self

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(("clip_visual.", "dino."))]

    @torch.no_grad()
    def backbone_tokens(self, clip_pixels: torch.Tensor, dino_pixels: torch.Tensor) -> BackboneTokens:
        clip_out = self.clip_visual.forward_intermediates(
            clip_pixels, indices=self.clip_block_indices, output_fmt="NLC"
        )
        # Neither intermediates_only nor output_dict: timm returns (final tokens, intermediates).
        dino_final, dino_inter = cast(
            tuple[torch.Tensor, list[torch.Tensor]],
            self.dino.forward_intermediates(dino_pixels, indices=self.dino_block_indices, output_fmt="NLC"),
        )
        clip_blocks = torch.stack(clip_out["image_intermediates"], dim=1)
        dino_blocks = torch.stack(dino_inter, dim=1)
        if clip_blocks.shape[2] != dino_blocks.shape[2]:
            raise ValueError(
                f"CLIP gives {clip_blocks.shape[2]} patches but DINOv2 gives {dino_blocks.shape[2]}: "
                "input sizes must yield the same grid"
            )
        return BackboneTokens(clip_blocks, clip_out["image_features"], dino_blocks, dino_final[:, 0])

    def merge(self, tokens: BackboneTokens) -> torch.Tensor:
        """Trainable part: LLN every block, weight by the block scales, concat cls tokens."""
        c_bar = sum(a * lln(tokens.clip_blocks[:, i]) for i, (a, lln) in enumerate(zip(self.alpha, self.clip_llns)))
        d_bar = sum(b * lln(tokens.dino_blocks[:, i]) for i, (b, lln) in enumerate(zip(self.beta, self.dino_llns)))
        num_patches = c_bar.shape[1]
        c_hat = tokens.clip_cls[:, None].expand(-1, num_patches, -1)
        d_hat = tokens.dino_cls[:, None].expand(-1, num_patches, -1)
        return torch.cat([c_bar, c_hat, d_bar, d_hat], dim=-1)

    def forward(self, clip_pixels: torch.Tensor, dino_pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,Sc,Sc], [B,3,Sd,Sd] -> z [B, grid*grid, out_dim]."""
        return self.merge(self.backbone_tokens(clip_pixels, dino_pixels))
