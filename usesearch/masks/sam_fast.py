"""SAM at less cost, the same masks: fused attention in the image encoder, image
tokens shared across prompts in the mask decoder, and opt-in ``torch.compile``.

segment-anything-fast's first lever: the encoder's attention (windowed 14x14 and
global 64x64 tokens, with decomposed relative-position terms) through
``F.scaled_dot_product_attention``, the relative-position terms passed as its
additive mask. The product is the same sum as segment-anything's
``add_decomposed_rel_pos`` followed by softmax; what changes is that the fused
kernel never writes the [tokens x tokens] probability matrix (1 GB per photo and
head-group in float32 for ViT-H's global blocks), and its float rounding.

The mask decoder copies the image embedding once per prompt and projects every copy
(keys and values for the tokens' reading of the image, queries and output for the
image's reading of the tokens), though each prompt's 7 tokens are all that differ.
Here the image tokens are shared across prompts until the first layer's
image-to-token attention makes them differ, and no projection ever meets them:
each one is moved onto the prompts' tokens by the attention's algebra (a head's
score q . W_k x = (W_k^T q) . x), so the per-prompt image tokens are read and
written by products 56 rows wide where segment-anything's are 128 wide, and by half
as many of them. ViT-H's decoder at 1,024 prompts: 2.09 TFLOP, against 3.71 in
segment-anything and 2.89 with the copies shared alone; outputs equal
segment-anything's within float rounding (tested). A prompt the generator's IoU
filter will drop whole is not upscaled (``upscale_above``).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from segment_anything.modeling.transformer import Attention as DecoderAttention

from usesearch.masks.sam_prompts import embed_points_in_queue


def _sdpa_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` of segment-anything, the same product through SDPA."""
    batch, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(batch, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, tokens, head_dim]
    bias = None
    if self.use_rel_pos:
        # add_decomposed_rel_pos's two terms, from the unscaled queries as there
        r_q = q.reshape(batch * self.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, _rel_pos(h, self.rel_pos_h).to(r_q.dtype))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, _rel_pos(w, self.rel_pos_w).to(r_q.dtype))
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(batch, self.num_heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(batch, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(batch, h, w, -1)
    return self.proj(out)


def _rel_pos(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """``get_rel_pos(size, size, rel_pos)``, its indices made on ``rel_pos``'s device: the
    library's come from a CPU ``arange``, a blocking copy to the card in each attention
    block (64 an encoder call for ViT-H). The same rows (queries and keys of one size:
    offsets q - k + size - 1); a table of another length is resized by the library."""
    if rel_pos.shape[0] != 2 * size - 1:
        return get_rel_pos(size, size, rel_pos)
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[coords[:, None] - coords[None, :] + (size - 1)]


def use_sdpa(sam: Sam) -> Sam:
    """Route every attention block of SAM's image encoder through SDPA (in place)."""
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_forward, module)
    sam.sdpa = True
    return sam


def _attend(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's decoder ``Attention.forward`` through SDPA: the prompts' own
    tokens attending to each other, and every attention of a decoder given mask
    prompts (segment-anything's layer path), whose fused kernel never writes the
    [tokens x tokens] scores (float32 [prompts, heads, 4096, 7], 0.9 GB at 1,024
    prompts, in each cross-attention)."""
    q = attention._separate_heads(attention.q_proj(q), attention.num_heads)  # [B, heads, tokens, head_dim]
    k = attention._separate_heads(attention.k_proj(k), attention.num_heads)
    v = attention._separate_heads(attention.v_proj(v), attention.num_heads)
    return attention.out_proj(attention._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def _norm(norm: torch.nn.LayerNorm | LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` (a ``LayerNorm`` over the last dimension) whose output stays in
    autocast's dtype where autocast is on. Autocast runs layer norms in float32 and
    returns float32, so the decoder's per-prompt image tokens (1,024 x 4,096 x 256 at
    1,024 prompts) would travel between its layers at 4 GB a tensor, every add and
    every cast to the next bfloat16 projection a pass over it; here they stay bfloat16
    (2 GB), the norm's arithmetic still float32 inside the kernel. Without autocast it
    is ``LayerNorm``'s own ``F.layer_norm``; ``LayerNorm2d`` is normed this way over a
    channels-last view."""
    device = x.device.type
    # (no autocast on a device it does not know: the meta device of ``stage_floor.py``)
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)
    dtype = torch.get_autocast_dtype(device)
    with torch.autocast(device, enabled=False):
        return F.layer_norm(x.to(dtype), (x.shape[-1],), norm.weight.to(dtype), norm.bias.to(dtype), norm.eps)


def _softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.softmax(dim)`` in ``x``'s dtype where autocast would return float32: the
    probabilities go on into a bfloat16 product, where segment-anything's float32 ones
    are cast back; the kernel's sums are float32 either way."""
    device = x.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return x.softmax(dim)
    with torch.autocast(device, enabled=False):
        return x.softmax(dim)


def _per_head(linear: torch.nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight [heads, head_dim, C] and bias [heads, head_dim]."""
    weight = linear.weight
    return weight.view(heads, weight.shape[0] // heads, weight.shape[1]), linear.bias.view(heads, -1)


def _tokens_read_image(attention, tokens: torch.Tensor, image: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``attention(q=tokens, k=image, v=values)`` of a ``cross_attn_token_to_image``
    whose key and value projections are never applied to the image tokens.
    A head's score is q . (W_k x + b_k) = (W_k^T q) . x + q . b_k, and the last term,
    the same for every image token, leaves the softmax unchanged; its output is
    sum_i p_i (W_v v_i + b_v) = W_v (sum_i p_i v_i) + b_v. So each prompt's 8 heads x
    7 tokens read the image tokens as 56 queries of one 256-wide head (one fused
    attention), and W_v applies to 56 rows, where segment-anything projects every
    prompt's 4,096 image tokens twice (a quarter of the decoder's FLOPs at 1,024
    prompts, and a 1 GB tensor each). ``image`` and ``values`` may have a batch of 1
    shared by every prompt: then the prompts' queries go side by side in one sequence."""
    heads = attention.num_heads
    q = attention.q_proj(tokens)  # [B, T, inner]
    b, t, inner = q.shape
    w_k, _ = _per_head(attention.k_proj, heads)
    w_v, b_v = _per_head(attention.v_proj, heads)
    reading = torch.einsum("bthd,hdc->bhtc", q.view(b, t, heads, -1), w_k)  # [B, heads, T, C]
    c, scale = reading.shape[-1], (inner // heads) ** -0.5
    # one head a batch of image tokens: all prompts' rows in one sequence where they are shared
    queries = reading.reshape(image.shape[0], 1, -1, c)
    read = F.scaled_dot_product_attention(queries, image[:, None], values[:, None], scale=scale)
    out = torch.einsum("bhtc,hdc->bthd", read.view(b, heads, t, c), w_v)  # [B, T, heads, head_dim]
    out = out + b_v.to(out.dtype)  # (in the product's dtype: bfloat16 under autocast)
    return attention.out_proj(out.reshape(b, t, inner))


def _image_reads_tokens(
    attention, image: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``residual + attention(q=image, k=tokens, v=values)`` of a
    ``cross_attn_image_to_token`` whose query and output projections are never applied
    to the image tokens. A head's score is (W_q x + b_q) . k = x . (W_q^T k) + b_q . k,
    and out_proj's sum over heads of W_o,h (sum_j p_j v_j) + b_o is sum over heads and
    tokens of p_j (W_o,h v_j + b_o / heads), each head's probabilities summing to 1.
    So the image tokens meet each prompt's 56 (head, token) rows twice, 56 wide, where
    segment-anything projects every prompt's 4,096 tokens in and out 128 wide; the
    residual sum is the product's own (``baddbmm``), not a pass of its own over them.
    ``image`` and ``residual`` may have a batch of 1 shared by every prompt."""
    heads = attention.num_heads
    k, v = attention.k_proj(tokens), attention.v_proj(values)  # [B, T, inner]
    b, t, inner = k.shape
    w_q, b_q = _per_head(attention.q_proj, heads)
    head_dim = inner // heads
    keys = k.view(b, t, heads, head_dim) * head_dim**-0.5
    reading = torch.einsum("bthd,hdc->bhtc", keys, w_q).reshape(b, heads * t, -1)  # [B, 56, C]
    bias = torch.einsum("bthd,hd->bht", keys, b_q).reshape(b, heads * t, 1)
    w_o = attention.out_proj.weight  # [C, inner]
    writing = torch.einsum("bthd,chd->bhtc", v.view(b, t, heads, head_dim), w_o.view(-1, heads, head_dim))
    writing = (writing + (attention.out_proj.bias / heads).to(writing.dtype)).reshape(b, heads * t, -1)  # [B, 56, C]
    hw, c = image.shape[1:]
    if image.shape[0] == 1 and b > 1:  # one product for every prompt against the shared tokens
        logits = torch.addmm(bias.reshape(-1, 1), reading.reshape(b * heads * t, c), image[0].T).view(b, heads * t, hw)
    else:
        logits = torch.baddbmm(bias, reading, image.transpose(1, 2))  # [B, 56, HW]
    probs = _softmax(logits.view(b, heads, t, hw), dim=2).view(b, heads * t, hw)  # over each head's tokens
    return torch.baddbmm(residual, probs.transpose(1, 2), writing)  # [B, HW, C]


def _layer(layer, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor):
    """A ``TwoWayAttentionBlock``'s forward, the same sums: both cross-attentions with
    their image-side projections moved onto the prompts' tokens, the image tokens with
    their positions (``keys + key_pe``) made once, where segment-anything makes them
    twice (a pass over the per-prompt tokens each), the norms in ``_norm``. ``keys``
    [1, HW, C] shared by every prompt (the first layer's) become per-prompt in the
    image's reading of the tokens. Returns per-prompt (queries, keys)."""
    if layer.skip_first_layer_pe:
        queries = _norm(layer.norm1, layer.self_attn(q=queries, k=queries, v=queries))
    else:
        q = queries + query_pe
        queries = _norm(layer.norm1, queries + layer.self_attn(q=q, k=q, v=queries))
    image = keys + key_pe
    queries = _norm(
        layer.norm2, queries + _tokens_read_image(layer.cross_attn_token_to_image, queries + query_pe, image, keys)
    )
    queries = _norm(layer.norm3, queries + layer.mlp(queries))
    keys = _image_reads_tokens(layer.cross_attn_image_to_token, image, queries + query_pe, queries, keys)
    return queries, _norm(layer.norm4, keys)


def _upscale_tokens_conv(decoder, keys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``output_upscaling`` of the per-prompt image tokens [B, HW, C] -> [B, C/8, 4h, 4w],
    the same sums without the copy that lays the tokens out channels-first (2 GB at
    1,024 prompts): the tokens are read in place as a channels-last image, which the
    transposed convolutions take as it is, and ``LayerNorm2d`` (a layer norm over the
    channels, in five float32 passes under autocast) is one ``F.layer_norm`` over them."""
    conv1, norm2d, act1, conv2, act2 = decoder.output_upscaling
    norm2d = cast(LayerNorm2d, norm2d)
    b, _, c = keys.shape
    x = conv1(keys.reshape(b, h, w, c).permute(0, 3, 1, 2))
    x = _norm(norm2d, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return act2(conv2(act1(x)))


def _shares_tokens(image_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor) -> bool:
    """Whether every prompt's image tokens are the same: one photo's embedding, and no
    mask prompt (the dense embedding one vector broadcast to every prompt, stride 0)."""
    return dense_prompt_embeddings.stride(0) == 0 and image_embeddings.shape[0] == 1


def _predict_masks_shared(
    self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, used=None, upscale_above=None
):
    """``MaskDecoder.predict_masks`` for point prompts without mask prompts: then the
    dense embedding is one vector broadcast to every prompt (stride 0), so the image
    tokens entering the transformer are the same for all prompts: they are not copied
    per prompt, and no projection of them is (2.09 TFLOP at 1,024 ViT-H prompts,
    against segment-anything's 3.71). Anything else takes segment-anything's path.

    ``upscale_above`` (with ``used``, the masks the caller keeps): the predicted IoUs
    come from the transformer's output before any upscaling, so a prompt none of whose
    used masks scores above it, which the generator's IoU filter would drop whole, is
    not upscaled; its masks are zeros. The upscaling is the decoder's largest part
    (two transposed convolutions, a norm and two GELUs over 16 times the tokens)."""
    if not _shares_tokens(image_embeddings, dense_prompt_embeddings):
        return type(self).predict_masks(
            self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
    transformer = self.transformer
    output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
    tokens = torch.cat(
        (output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1), sparse_prompt_embeddings), dim=1
    )
    src = image_embeddings + dense_prompt_embeddings[:1]
    _, c, h, w = src.shape
    # [1, HW, C], each token's channels side by side: a fused attention takes no other layout
    keys, key_pe = (x.flatten(2).transpose(1, 2).contiguous() for x in (src, image_pe))
    queries, keys = _layer(transformer.layers[0], tokens, keys, tokens, key_pe)
    key_pe = key_pe.to(keys.dtype)  # per-prompt keys + key_pe in the keys' dtype (bfloat16 under autocast)
    for layer in transformer.layers[1:]:
        queries, keys = _layer(layer, queries, keys, tokens, key_pe)
    attn_out = _tokens_read_image(transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    hs = _norm(transformer.norm_final_attn, queries + attn_out)
    iou_pred = self.iou_prediction_head(hs[:, 0, :])
    if upscale_above is None:
        return mask_logits(self, hs, keys, h, w), iou_pred
    return _gated_masks(self, hs, keys, iou_pred[:, used], upscale_above, h, w), iou_pred


# The compiled upscaling (for any number of prompts) of the ``CompiledDecoder`` call in
# progress in this thread, with its decoder; None outside one. For ``_gated_masks``,
# which runs outside that call's graph. Only such a call compiles it: the same decoder
# called eagerly (a short GPU run's, ``--no-compile``'s, a failed compile's fallback)
# compiled it too while it was kept by decoder, and failed every photo where compiling
# fails (no Triton for the card).
COMPILED_UPSCALING: ContextVar[tuple[torch.nn.Module, Callable] | None] = ContextVar("upscaling", default=None)


@torch.compiler.disable
def _gated_masks(decoder, hs, keys, used_iou, upscale_above: float, h: int, w: int) -> torch.Tensor:
    """The masks of the prompts any of whose used masks' IoUs (``used_iou``, compared in
    float32 as the generator's filter compares them) is above ``upscale_above``; zeros
    for the others. Outside a compiled decoder's graph: the kept count is data, and a
    graph after it would compile again for each count (0, 1, then dynamic; again at
    each new batch size). The kept prompts go through the compiled upscaling where the
    decoder has one (dynamic in its batch from the start)."""
    kept = torch.nonzero((used_iou.float() > upscale_above).any(dim=1)).flatten()
    if len(kept) == 0:
        return hs.new_zeros(len(hs), decoder.num_mask_tokens, 4 * h, 4 * w)  # (the full path's dtype, as hs's)
    active = COMPILED_UPSCALING.get()
    upscaling = active[1] if active is not None and active[0] is decoder else partial(mask_logits, decoder)
    some = upscaling(hs[kept], keys[kept], h, w)
    masks = some.new_zeros(len(hs), *some.shape[1:])
    masks[kept] = some
    return masks


# Device types whose decoder upscales by per-pixel products (``mask_logits``), not cuDNN's
# or oneDNN's transposed convolutions.
PIXELWISE_ON = {"cuda"}


def _pixelwise(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A 2x2, stride-2 transposed convolution as one product per input pixel: weight
    [C_in, 4 * C_out] (each output pixel (2i + a, 2j + b) of input pixel (i, j) a
    block of C_out columns, in (a, b) order) and bias [4 * C_out]; None for any other
    transposed convolution. out[o, 2i + a, 2j + b] = b_o + sum_c x[c, i, j] W[c, o, a, b]:
    the four output pixels of an input pixel read it alone."""
    plain = conv.padding == (0, 0) and conv.output_padding == (0, 0) and conv.dilation == (1, 1)
    if not (conv.kernel_size == conv.stride == (2, 2) and plain and conv.groups == 1):
        return None
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in)  # (a linear's [out, in], contiguous)
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(c_out)
    return weight, bias.repeat(4)


def mask_logits(decoder, hs: torch.Tensor, keys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The mask logits [B, masks, 4h, 4w] of per-prompt tokens ``hs`` and image tokens
    ``keys`` [B, hw, C]. segment-anything upscales the tokens by two 2x2 stride-2
    transposed convolutions (a norm over the channels and GELUs between), then takes
    each pixel's product with the masks' hypernetwork vectors. Each of those reads one
    pixel's channels alone, so here every step is a product or a norm over each
    pixel's channels where it lies: an input token's 16 output pixels stay side by
    side ([B, hw, 16, C']) until the masks' few channels are laid out as an image at
    the end. No transposed convolution (cuDNN's ran 4.4 ms each for ViT-H's 510 gated
    prompts on an H100, its dgrad kernels, against a GEMM's ~1 ms), and no copy of
    the 32-channel tokens (2 GB at 510 prompts): only the masks' 4 are rearranged.
    The same sums as segment-anything's (tested, within float rounding). On the
    devices in ``PIXELWISE_ON``: a CPU's transposed convolutions are faster (64 ViT-B
    prompts, 2 threads: 1.13-1.27 s against 1.35 s, the products' bias copies and
    the masks' 8-way rearrangement costing more there than a GPU's bandwidth makes them)."""
    conv1, norm2d, act1, conv2, act2 = decoder.output_upscaling
    first, second = (_pixelwise(conv1), _pixelwise(conv2)) if keys.device.type in PIXELWISE_ON else (None, None)
    hyper_in = torch.stack([mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, masks = hyper_in.shape[:2]
    if first is None or second is None:  # a CPU, or not segment-anything's upscaling
        upscaled = _upscale_tokens_conv(decoder, keys, h, w)  # [B, C', 4h, 4w], channels last in memory
        pixels = upscaled.permute(0, 2, 3, 1).reshape(b, 16 * h * w, -1)
        return (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, masks, 4 * h, 4 * w)
    x = F.linear(keys, *first)  # [B, hw, 4 * C1]: output pixels (a1, b1) of each token
    x = act1(_norm(cast(LayerNorm2d, norm2d), x.reshape(b, h * w * 4, -1)))  # per pixel, over its C1 channels
    x = act2(F.linear(x, *second))  # [B, hw * 4, 4 * C2]: then (a2, b2) of each
    logits = x.reshape(b, h * w * 16, -1) @ hyper_in.transpose(1, 2).to(x.dtype)  # [B, hw * 16, masks]
    # (i, j, a1, b1, a2, b2) -> row 4i + 2a1 + a2, column 4j + 2b1 + b2
    logits = logits.view(b, h, w, 2, 2, 2, 2, masks).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return logits.reshape(b, masks, 4 * h, 4 * w)


def _forward(
    self,
    image_embeddings,
    image_pe,
    sparse_prompt_embeddings,
    dense_prompt_embeddings,
    multimask_output: bool,
    upscale_above: float | None = None,
):
    """``MaskDecoder.forward``, taking ``upscale_above`` (``_predict_masks_shared``)."""
    used = slice(1, None) if multimask_output else slice(0, 1)
    if not _shares_tokens(image_embeddings, dense_prompt_embeddings):
        upscale_above = None  # segment-anything's path takes no gate
    masks, iou_pred = self.predict_masks(
        image_embeddings=image_embeddings,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse_prompt_embeddings,
        dense_prompt_embeddings=dense_prompt_embeddings,
        **({} if upscale_above is None else {"used": used, "upscale_above": upscale_above}),
    )
    return masks[:, used, :, :], iou_pred[:, used]


def upscales_kept(decoder: torch.nn.Module) -> bool:
    """Whether ``decoder`` takes ``upscale_above`` (one ``share_image_tokens`` routed)."""
    return bool(getattr(decoder, "takes_upscale_above", False))


def share_image_tokens(sam: Sam) -> Sam:
    """Route SAM's mask decoder through ``_predict_masks_shared``, and each of its
    attention layers through SDPA (in place)."""
    if not sam.mask_decoder.transformer.layers[0].skip_first_layer_pe:
        return sam  # not segment-anything's decoder layout: leave it as it is
    sam.mask_decoder.predict_masks = types.MethodType(_predict_masks_shared, sam.mask_decoder)
    sam.mask_decoder.forward = types.MethodType(_forward, sam.mask_decoder)
    sam.mask_decoder.takes_upscale_above = True
    for module in sam.mask_decoder.modules():
        if isinstance(module, DecoderAttention):
            module.forward = types.MethodType(_attend, module)
    return sam


def speed_up(sam: Sam) -> Sam:
    """The levers, as ``load_sam`` applies them to every SAM it hands out (and the
    prompt encoder's point embedding queued without a wait: ``sam_prompts``)."""
    return embed_points_in_queue(share_image_tokens(use_sdpa(sam)))
