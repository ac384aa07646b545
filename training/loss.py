"""Segment-text contrastive loss, paper eq. (1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The paper writes exp(s·t/τ) with "τ = 30". With unit vectors s·t lies in [-1, 1], so
# dividing by 30 would flatten every softmax to near-uniform; the value only makes
# sense as a logit *scale* (logits = 30 · s·t), CLIP's convention, which we use.
from usesearch.tasks.semseg import LOGIT_SCALE  # noqa: E402  (one definition: inference uses the same)


def segment_text_loss(
    segments: torch.Tensor, texts: torch.Tensor, text_ids: torch.Tensor | None = None, logit_scale: float = LOGIT_SCALE
) -> torch.Tensor:
    """Symmetric InfoNCE over the k segments of a batch and their sampled texts.

    ``text_ids[i]`` identifies segment i's text; segments that drew the same text are
    not counted as each other's negatives (their logits are masked out).
    """
    logits = logit_scale * segments @ texts.T
    if text_ids is not None:
        same_text = text_ids[:, None] == text_ids[None, :]
        same_text.fill_diagonal_(False)
        logits = logits.masked_fill(same_text, float("-inf"))
    targets = torch.arange(len(segments), device=segments.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
