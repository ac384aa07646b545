"""Multi-granularity captioning (paper §3.1): any transformers image-text-to-text
model, prompted verbatim with the paper's prompt and sampled with §4.1's settings."""

from __future__ import annotations

import numpy as np
import torch

from usesearch.errors import UsesearchError
from usesearch.models.backbones import seeded

from .pretrained import PretrainedStage, load_pretrained
from .records import TextRef

CAPTION_PROMPT = (
    "Describe this image in detail. "
    "In your description, specifically mention ALL VISIBLE parts of each object in the image."
)
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.4, "top_k": 5}  # paper §4.1 (CogVLM-17B)


class TransformersCaptioner(PretrainedStage):
    def __init__(
        self, model, processor, name: str, device: str | torch.device = "cpu", max_new_tokens: int = 256, seed: int = 0
    ):
        super().__init__(model, processor, device)
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    @classmethod
    def from_pretrained(
        cls, name: str, revision: str | None = None, trust_remote_code: bool = False, device="cpu", **kwargs
    ):
        if trust_remote_code and not revision:
            raise UsesearchError(
                f"{name} needs remote code; it only runs from an explicitly pinned revision "
                "(--captioner-revision COMMIT_SHA), so the code you audited is the code that runs"
            )
        from transformers import AutoModelForImageTextToText

        model, processor = load_pretrained(
            AutoModelForImageTextToText,
            name,
            "captioning model",
            "--captioner tiny",
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        return cls(model, processor, name, device, **kwargs)

    @property
    def identity(self) -> str:
        """What a cached caption depends on (the cache key's model part)."""
        return f"{self.name}|{self.model_identity()}|tokens={self.max_new_tokens}|seed={self.seed}"

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> TextRef:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=rgb, text=prompt, return_tensors="pt", input_data_format="channels_last").to(
            self.device
        )  # said, not guessed: a photo 1 or 3 pixels tall looked channels-first
        with seeded(self.seed):  # sampling, but reproducible per run
            out = self.model.generate(**inputs, **SAMPLING, max_new_tokens=self.max_new_tokens)
        text = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        return TextRef(" ".join(text.split()), "mllm_caption", "caption")
