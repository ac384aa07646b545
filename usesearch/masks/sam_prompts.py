"""SAM's point prompts embedded without waiting for the device: the same numbers as
segment-anything's ``PromptEncoder._embed_points``, by ``torch.where``.

segment-anything adds each label's embedding with boolean-mask indexing
(``embedding[labels == 1] += weight``). On a GPU each such read and write is a
``nonzero``, and each ``nonzero`` waits for everything queued before it: six waits a
prompt batch, so the host stops queueing the decoder's kernels while the image
encoder's (or the side streams') still run. Selecting by ``torch.where`` queues the
same sums and waits for nothing.

The sums are segment-anything's to the bit: its in-place ``+=`` onto a bfloat16
embedding (under autocast) adds in float32 and rounds into bfloat16, as the
out-of-place sum cast back here does; a padding point's embedding is
``0.0 + not_a_point`` as there (tested against the stock encoder, labels -1, 0 and
1, float32 and bfloat16)."""

from __future__ import annotations

import types

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.prompt_encoder import PromptEncoder


def _embed_points(self: PromptEncoder, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
    points = points + 0.5  # the pixel's centre, as segment-anything shifts it
    if pad:
        padding_point = torch.zeros((points.shape[0], 1, 2), device=points.device)
        padding_label = -torch.ones((labels.shape[0], 1), device=labels.device)
        points = torch.cat([points, padding_point], dim=1)
        labels = torch.cat([labels, padding_label], dim=1)
    embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
    labels = labels[..., None]

    def plus(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (x + weight).to(x.dtype)  # as ``x += weight`` rounds it

    embedding = torch.where(labels == -1, plus(torch.zeros_like(embedding), self.not_a_point_embed.weight), embedding)
    embedding = torch.where(labels == 0, plus(embedding, self.point_embeddings[0].weight), embedding)
    return torch.where(labels == 1, plus(embedding, self.point_embeddings[1].weight), embedding)


def embed_points_in_queue(sam: Sam) -> Sam:
    """Route ``sam``'s prompt encoder through ``_embed_points`` (in place); a prompt
    encoder of another layout (more labels than segment-anything's three) is left as it is."""
    encoder = sam.prompt_encoder
    if isinstance(encoder, PromptEncoder) and encoder.num_point_embeddings == 4:
        encoder._embed_points = types.MethodType(_embed_points, encoder)
    return sam
