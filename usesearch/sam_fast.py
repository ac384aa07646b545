"""SAM's image encoder with PyTorch's fused attention, and opt-in ``torch.compile``.

segment-anything-fast's first lever: the encoder's attention (windowed 14x14 and
global 64x64 tokens, with decomposed relative-position terms) through
``F.scaled_dot_product_attention``, the relative-position terms passed as its
additive mask. The product is the same sum as segment-anything's
``add_decomposed_rel_pos`` followed by softmax; what changes is that the fused
kernel never writes the [tokens x tokens] probability matrix (1 GB per photo and
head-group in float32 for ViT-H's global blocks), and its float rounding.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


def _sdpa_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` of segment-anything, the same product through SDPA."""
    batch, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(batch, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, tokens, head_dim]
    bias = None
    if self.use_rel_pos:
        # add_decomposed_rel_pos's two terms, from the unscaled queries as there
        r_q = q.reshape(batch * self.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h).to(r_q.dtype))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w).to(r_q.dtype))
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(batch, self.num_heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(batch, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(batch, h, w, -1)
    return self.proj(out)


def use_sdpa(sam: Sam) -> Sam:
    """Route every attention block of SAM's image encoder through SDPA (in place)."""
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_forward, module)
    sam.sdpa = True
    return sam


COMPILE_BACKEND = "inductor"


def compile_modules(*modules: torch.nn.Module) -> None:
    """``torch.compile`` each module in place (``--compile``): a minute or more of
    compiling when the first photo arrives, for the steady state of a long run.
    Shapes are static (SAM's 1024-px canvas, the backbones' letterbox, fixed prompt
    batches), so few recompiles follow."""
    for module in modules:
        module.compile(backend=COMPILE_BACKEND, dynamic=False)
