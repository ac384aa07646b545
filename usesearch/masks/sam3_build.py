"""SAM 3's image model composed from the ``sam3`` package's own classes (``sam3==0.1.4``),
at any size: its own sizes (840.5 M parameters) or the seeded ``tiny`` model's.

Why not sam3's ``build_sam3_image_model``: it retries Hugging Face unless told not
to, two of its constructors hard-code ``device="cuda"`` (caches that otherwise fill
lazily on the model's device; left lazy here), and it builds one size only. The
composition here is its composition, checked key for key and output for output by
``benchmarks/refine_cost.py --check-builder``. Also adapted here:

* Its BPE vocabulary is not in the wheel; open_clip ships the same file.
* The geometry encoder pins a tensor even when no box is given: a no-op here where
  torch has no CUDA (pinning needs a driver).
* ``positional_embedding`` and ``text_projection`` of the text encoder are left
  uninitialised (``torch.empty``) for a checkpoint to fill: ``fill_uninitialised``
  fills them, for random weights only, whose outputs would otherwise be NaN.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from usesearch.errors import MissingExtraError, UsesearchError, first_line

INSTALL = "pip install -e '.[sam3]'"


@dataclass(frozen=True)
class Sam3Architecture:
    """The sizes of a SAM 3 image model; the defaults are SAM 3's own (840.5 M parameters)."""

    image_size: int = 1008
    patch_size: int = 14
    pretrain_image_size: int = 336
    vit_width: int = 1024
    vit_depth: int = 32
    vit_heads: int = 16
    vit_mlp_ratio: float = 4.625
    vit_global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 24
    text_width: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    d_model: int = 256
    heads: int = 8
    ffn: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    queries: int = 200
    geometry_layers: int = 3


TINY = Sam3Architecture(
    image_size=224,
    pretrain_image_size=224,
    vit_width=32,
    vit_depth=2,
    vit_heads=2,
    vit_mlp_ratio=2.0,
    vit_global_blocks=(1,),
    window_size=8,
    text_width=32,
    text_heads=2,
    text_layers=1,
    d_model=32,
    heads=2,
    ffn=64,
    encoder_layers=1,
    decoder_layers=1,
    queries=16,
    geometry_layers=1,
)


def bpe_vocabulary() -> str:
    """The CLIP BPE vocabulary SAM 3's tokenizer reads (not shipped in the sam3 wheel)."""
    from usesearch.models.clip_library import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise UsesearchError(f"open_clip's BPE vocabulary is missing ({path}); reinstall open_clip_torch")
    return str(path)


def import_sam3() -> None:
    try:
        with warnings.catch_warnings():  # import-time notes about CUDA autocast and torch.jit
            warnings.simplefilter("ignore")
            import sam3.model.sam3_image  # noqa: F401
    except ImportError as exc:
        # A module missing is named; any other failure to import (a version the package
        # refuses, a broken build) is said in its own words, not as "None is missing".
        why = f"{exc.name} is missing" if exc.name else f"it failed to import: {first_line(exc)}"
        raise MissingExtraError(f"SAM 3 needs the sam3 package ({why}): {INSTALL}") from None


@contextlib.contextmanager
def pinning_is_a_no_op() -> Iterator[None]:
    original = torch.Tensor.pin_memory
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.pin_memory = original  # type: ignore[method-assign]


def build_sam3(arch: Sam3Architecture) -> Any:
    """A ``Sam3Image`` on the CPU, in eval mode, with random weights: sam3's classes
    composed as its ``build_sam3_image_model`` composes them, at ``arch``'s sizes."""
    import_sam3()
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as Attention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    class GeometryEncoder(SequenceGeometryEncoder):
        def _encode_boxes(self, *args, **kwargs):
            if torch.cuda.is_available():
                return super()._encode_boxes(*args, **kwargs)
            with pinning_is_a_no_op():
                return super()._encode_boxes(*args, **kwargs)

    d = arch.d_model

    def position() -> PositionEmbeddingSine:
        return PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000)

    def attention(batch_first: bool | None = None, dropout: float = 0.1) -> Attention:
        extra = {} if batch_first is None else {"batch_first": batch_first}
        return Attention(num_heads=arch.heads, dropout=dropout, embed_dim=d, **extra)

    def fusion_layer(**kwargs) -> TransformerEncoderLayer:
        return TransformerEncoderLayer(
            activation="relu", d_model=d, dim_feedforward=arch.ffn, dropout=0.1, pre_norm=True, **kwargs
        )

    vit = ViT(
        img_size=arch.image_size,
        pretrain_img_size=arch.pretrain_image_size,
        patch_size=arch.patch_size,
        embed_dim=arch.vit_width,
        depth=arch.vit_depth,
        num_heads=arch.vit_heads,
        mlp_ratio=arch.vit_mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=arch.vit_global_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=arch.window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    neck = Sam3DualViTDetNeck(position_encoding=position(), d_model=d, scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=vit)
    tokenizer = SimpleTokenizer(bpe_path=bpe_vocabulary())
    text = VETextEncoder(
        tokenizer=tokenizer, d_model=d, width=arch.text_width, heads=arch.text_heads, layers=arch.text_layers
    )
    encoder = TransformerEncoderFusion(
        layer=fusion_layer(
            pos_enc_at_attn=True,
            pos_enc_at_cross_attn_keys=False,
            pos_enc_at_cross_attn_queries=False,
            self_attention=attention(True),
            cross_attention=attention(True),
        ),
        num_layers=arch.encoder_layers,
        d_model=d,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(
            activation="relu",
            d_model=d,
            dim_feedforward=arch.ffn,
            dropout=0.1,
            cross_attention=attention(),
            n_heads=arch.heads,
            use_text_cross_attention=True,
        ),
        num_layers=arch.decoder_layers,
        num_queries=arch.queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=d,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        use_act_checkpoint=True,
        presence_token=True,
    )
    scoring_mlp = MLP(
        input_dim=d,
        hidden_dim=arch.ffn,
        output_dim=d,
        num_layers=2,
        dropout=0.1,
        residual=True,
        out_norm=torch.nn.LayerNorm(d),
    )
    segmentation = UniversalSegmentationHead(
        hidden_dim=d,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=attention(dropout=0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d),
    )
    geometry = GeometryEncoder(
        pos_enc=position(),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=d,
        num_layers=arch.geometry_layers,
        layer=fusion_layer(
            pos_enc_at_attn=False,
            pos_enc_at_cross_attn_queries=False,
            pos_enc_at_cross_attn_keys=True,
            self_attention=attention(False),
            cross_attention=attention(False),
        ),
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )
    model = Sam3Image(
        backbone=SAM3VLBackbone(visual=neck, text=text, scalp=1),
        transformer=TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d),
        input_geometry_encoder=geometry,
        segmentation_head=segmentation,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=DotProductScoring(d_model=d, d_proj=d, prompt_mlp=scoring_mlp),
        use_instance_query=False,
        multimask_output=True,
        inst_interactive_predictor=None,
        matcher=None,
    )
    return model.eval()


def fill_uninitialised(model: Any) -> None:
    """Random weights only: the two text-encoder parameters sam3 leaves to a checkpoint,
    initialised as open_clip initialises them."""
    encoder = model.backbone.language_backbone.encoder
    with torch.no_grad():
        torch.nn.init.normal_(encoder.positional_embedding, std=0.01)
        torch.nn.init.normal_(encoder.text_projection, std=encoder.width**-0.5)
