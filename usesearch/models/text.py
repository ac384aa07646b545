"""CLIP text embeddings under prompt-template ensembles, cached per text."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from usesearch.errors import BadArgumentError

if TYPE_CHECKING:
    from open_clip import CLIP  # untyped package: Any to mypy


# Paper §4.2: the four templates used for referring expressions.
EXPRESSION_TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "This is a photo of {}",
    "There is {} in the scene",
    "a photo of {} in the scene",
)

# §4.3 embeds class names with "the prompt template used in [10]": [10] is CLIP-S4
# (He et al., CVPR 2023), whose templates neither the paper nor anything reachable
# here lists. We use the 14-template ensemble of ViLD (Gu et al., the paper's [8])
# that two-stage segmenters (OVSeg, SAN) use for class names; the paper's expression
# templates are drawn from it.
CLASSNAME_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

TEMPLATE_SETS = {"expression": EXPRESSION_TEMPLATES, "classname": CLASSNAME_TEMPLATES}


def check_templates(templates: Sequence[str]) -> None:
    """Prompt templates, each holding one ``{}`` for the text: a template without it gave
    every text the same vector, a string was split into characters."""
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)) or not templates:
        raise BadArgumentError("templates is a non-empty list of strings, each with one {} for the text")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1 or template.replace("{}", "").count("{"):
            raise BadArgumentError(f"template {template!r} must hold the text's place as one {{}} and no other braces")


class TextEncoder:
    """Embeds texts as the normalised mean of their normalised per-template embeddings."""

    def __init__(self, clip_model: CLIP, tokenizer, device: torch.device, cache_size: int = 100_000):
        # On the device its tokens go to: USE moves only CLIP's image tower, so the text
        # tower stayed on the CPU and every text query on a GPU failed (devices differ).
        self.model = clip_model.to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[tuple[str, ...], str], np.ndarray] = OrderedDict()
        self._said_cut = False  # a text past CLIP's context said once a model (a curated dataset's captions: many)

    def _say_cut(self, texts: list[str], templates: tuple[str, ...]) -> None:
        """CLIP reads a prompt's first ``context_length`` tokens (77) and drops the rest
        without a word: a query of 100 words ranked by its first 70. Said once a model."""
        limit, encode = getattr(self.tokenizer, "context_length", None), getattr(self.tokenizer, "encode", None)
        if self._said_cut or not isinstance(limit, int) or not callable(encode):
            return
        overhead = max(len(encode(template.format(""))) for template in templates) + 2  # (with start and end tokens)
        for text in texts:
            # (a token is a character or more: a short text is never tokenized here)
            tokens = len(encode(text)) if len(text) > limit - overhead else 0
            if tokens + overhead > limit:
                self._said_cut = True
                logging.getLogger(__name__).warning(
                    "a text of %d tokens is read as its first %d (CLIP's context, its template's included): "
                    "the rest is ignored (%.40r...)",
                    tokens,
                    limit - overhead,
                    text,
                )
                return

    @torch.inference_mode()
    def _encode_prompts(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(prompts[start : start + batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)

    def embed(self, texts: Sequence[str], templates: Sequence[str] = EXPRESSION_TEMPLATES) -> np.ndarray:
        if isinstance(texts, str):
            raise BadArgumentError("embed_text takes a list of strings, not a single string")
        if not isinstance(texts, (list, tuple)):  # (None, a NumPy array, a generator the checks below used up)
            raise BadArgumentError(f"embed_text takes a list of strings; got {type(texts).__name__}")
        for text in texts:
            if not isinstance(text, str):  # (None read as "an empty text", a number failed on .strip)
                raise BadArgumentError(f"embed_text takes strings; got {type(text).__name__} {text!r}")
            if not text.strip():
                raise BadArgumentError("cannot embed an empty text")
        check_templates(templates)
        key_templates = tuple(templates)
        missing = list(dict.fromkeys(t for t in texts if (key_templates, t) not in self._cache))
        if missing:
            self._say_cut(missing, key_templates)
            prompts = [template.format(text) for text in missing for template in key_templates]
            per_prompt = self._encode_prompts(prompts).view(len(missing), len(key_templates), -1)
            vectors = F.normalize(per_prompt.mean(1), dim=-1).cpu().numpy().astype(np.float32)
            for text, vector in zip(missing, vectors):
                self._cache[(key_templates, text)] = vector
        if not texts:
            return np.zeros((0, int(self.model.text_projection.shape[1])), np.float32)
        result = np.stack([self._cache[(key_templates, t)] for t in texts])
        for text in texts:
            self._cache.move_to_end((key_templates, text))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result
