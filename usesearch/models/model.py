"""The USE model and the two segment embedders built on it.

``USE`` is the nn.Module that trains: frozen backbones, trainable LLNs, block
scales and projection. ``USEEmbedder`` and ``CropEmbedder`` are the inference
objects ``load_model`` returns; both embed (image, masks) and text into the same
CLIP joint space, so every later stage works with either.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import batched_mask_to_box
from torch import nn

from usesearch.devices import bf16_autocast, synchronize, uses_bf16
from usesearch.errors import BadArgumentError, model_output_error
from usesearch.io.images import to_rgb_array
from usesearch.masks.rle import RleStack
from usesearch.masks.sam_compile import compiled_within, rerun_uncompiled, run_or_uncompile
from usesearch.models.ahead import BackbonesAhead
from usesearch.models.backbones import Clip, dino_mean_std
from usesearch.models.config import PresetConfig
from usesearch.models.encoder import BackboneTokens, USEImageEncoder
from usesearch.models.head import SegmentEmbeddingHead, letterbox_weights
from usesearch.models.inputs import as_masks, letterbox, padded, resized
from usesearch.models.text import CLASSNAME_TEMPLATES, EXPRESSION_TEMPLATES, TextEncoder

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


class USE(nn.Module):
    def __init__(self, preset: PresetConfig, clip: Clip, dino: VisionTransformer):
        super().__init__()
        self.preset = preset
        self.encoder = USEImageEncoder(clip.model.visual, dino, preset.head.lln_dim, preset.dino.last_blocks)
        self.head = SegmentEmbeddingHead(self.encoder.out_dim, clip.embed_dim)
        self.clip_mean_std = (clip.mean, clip.std)
        self.dino_mean_std = dino_mean_std(dino)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything a head checkpoint holds: LLNs, α, β and the projection."""
        names = {f"encoder.{n}" for n, _ in self.encoder.trainable_named_parameters()}
        names |= {f"head.{n}" for n, _ in self.head.named_parameters()}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.encoder.trainable_named_parameters()] + list(self.head.parameters())

    def pixels(
        self, rgb: np.ndarray, canvas: int | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image -> letterboxed inputs for CLIP and DINOv2 (same grid, own sizes),
        on ``device`` (default: the CPU); ``canvas`` as in ``letterbox`` (training crops)."""
        return self.pixels_from(self.resize_for_backbones(rgb, canvas), device)

    def resize_for_backbones(self, rgb: np.ndarray, canvas: int | None = None) -> dict[int, np.ndarray]:
        """``pixels``' first half, on the CPU: the photo resized once per distinct
        backbone size (``l14-336``'s two share 560 px: the resize is most of the time)."""
        sizes = {self.preset.clip.image_size, self.preset.dino.image_size}
        return {size: resized(rgb, size, canvas) for size in sorted(sizes)}

    def pixels_from(
        self, small: dict[int, np.ndarray], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixels``' second half: each size moved to ``device`` as uint8 (a quarter of
        float32's bytes) and normalised there; the values are ``letterbox``'s."""
        moved = {size: torch.from_numpy(pixels).to(device or "cpu") for size, pixels in small.items()}
        clip, dino = self.preset.clip.image_size, self.preset.dino.image_size
        return padded(moved[clip], clip, *self.clip_mean_std), padded(moved[dino], dino, *self.dino_mean_std)

    def backbone_tokens(self, clip_pixels: torch.Tensor, dino_pixels: torch.Tensor) -> BackboneTokens:
        return self.encoder.backbone_tokens(clip_pixels, dino_pixels)

    def forward(self, tokens: BackboneTokens, weights: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.merge(tokens), weights, image_index)


class TextEmbedder(Protocol):
    """What a query by text or by class names needs from a model."""

    preset: PresetConfig
    kind: str
    fingerprint: str
    dim: int

    def embed_text(self, texts: Sequence[str], templates: Sequence[str] = ...) -> np.ndarray: ...
    def embed_classes(self, names: Sequence[str]) -> np.ndarray: ...


class SegmentEmbedder(TextEmbedder, Protocol):
    """What the indexer, query engine and evaluators need from a model."""

    def embed_segments(self, image, masks) -> np.ndarray: ...


class _TextMixin:
    text: TextEncoder

    def embed_text(self, texts: Sequence[str], templates: Sequence[str] = EXPRESSION_TEMPLATES) -> np.ndarray:
        """Queries and expressions: the paper's four templates, averaged."""
        return self.text.embed(texts, templates)

    def embed_classes(self, names: Sequence[str]) -> np.ndarray:
        """Class names for segmentation: the class-name template ensemble."""
        return self.text.embed(names, CLASSNAME_TEMPLATES)


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def use_fingerprint(preset: PresetConfig, head_digest: str) -> str:
    """What a USE embedder's vectors depend on: the backbones' configs and the head's weights."""
    return f"use-{preset.name}-" + _digest({"kind": "use", "backbones": preset.backbone_dict(), "head": head_digest})


def crop_fingerprint(preset: PresetConfig, native_image_size: int) -> str:
    """What the crop embedder's vectors depend on: CLIP's config and the size crops go in at."""
    return f"crop-{preset.name}-" + _digest(
        {"kind": "crop", "clip": preset.backbone_dict()["clip"], "size": native_image_size}
    )


class TextModel(_TextMixin):
    """An embedder's text side alone: CLIP's text tower under the fingerprint of the
    whole model (``load_text_model``). A query by text or a class list needs nothing
    else: no DINOv2 is built and CLIP's image tower is dropped (``l14-336``: ~0.5 GB
    of weights kept instead of ~2.9 GB)."""

    def __init__(self, preset: PresetConfig, kind: str, fingerprint: str, clip: Clip, device: torch.device):
        clip.model.visual = None  # its image tower: nothing here reads it
        self.preset, self.kind, self.fingerprint, self.device = preset, kind, fingerprint, device
        self.dim = clip.embed_dim
        self.text = TextEncoder(clip.model, clip.tokenizer, device)


class USEEmbedder(BackbonesAhead, _TextMixin):
    """The paper's embedder: a photo's backbones once (``BackbonesAhead``: on a GPU
    beside SAM, a group a call), then each mask's pooled vector."""

    kind = "use"
    use: USE

    def __init__(self, use: USE, clip: Clip, device: torch.device, head_digest: str, precision: str = "auto"):
        self.use = use.to(device).eval()
        self.preset = use.preset
        self.device = device
        self.precision = precision  # the backbones' and LLNs' (``usesearch.devices.PRECISIONS``)
        self.seconds = {"backbones": 0.0, "pooling": 0.0}  # wall time in embed_segments, for benchmarks
        self.dim = clip.embed_dim
        self.text = TextEncoder(clip.model, clip.tokenizer, device)
        self.fingerprint = use_fingerprint(self.preset, head_digest)
        self._start_ahead()
        self.towers_uncompiled = False  # compiled towers gave NaN where eager ones did not: eager since

    def embed_from_features(self, z: torch.Tensor, masks, image_hw: tuple[int, int]) -> np.ndarray:
        return finite_vectors(self._pooled(z, masks, image_hw), self.use, self.precision)

    @torch.inference_mode()
    def _pooled(self, z: torch.Tensor, masks, image_hw: tuple[int, int]) -> np.ndarray:
        if isinstance(masks, RleStack):  # pooling weights straight from the runs
            if tuple(masks.hw) != tuple(image_hw):
                raise BadArgumentError(
                    f"masks must be {image_hw[0]}x{image_hw[1]} like the image, got {masks.hw[0]}x{masks.hw[1]}"
                )
        else:
            masks = as_masks(masks, image_hw)
        if len(masks) == 0:
            return np.zeros((0, self.dim), np.float32)
        weights = letterbox_weights(masks, self.preset.grid, device=self.device).to(self.device)
        return self.use.head(z[None], weights).float().cpu().numpy()

    def embed_segments(self, image, masks) -> np.ndarray:
        """One image and its bool masks [N,H,W] -> unit vectors [N, dim] (float32).
        The image encoder runs once whatever N is."""
        rgb = to_rgb_array(image)  # a PIL photo converted once, here, not again for the backbones
        start = time.perf_counter()
        keyed = self.prepared(image)  # work ahead is found by the very object given to it
        z = self.image_features(image if keyed else rgb)
        synchronize(self.device)  # so the backbones' time (beside SAM: the wait for them) is theirs, not pooling's
        middle = time.perf_counter()
        hw = rgb.shape[:2]
        out = self._pooled(z, masks, hw)
        if not _finite(out):  # a compiler's wrong code costs the compiling, not the photo
            said = "the image towers gave NaN or infinite numbers compiled: they run uncompiled"
            again = rerun_uncompiled(
                self.use.encoder, lambda: self._pooled(self._features_of([rgb])[0], masks, hw), _finite, said
            )
            if again is not None:
                self.towers_uncompiled = True
                self._drop_ahead()  # (a group's other photos': computed compiled)
                out = again
        self.seconds["backbones"] += middle - start
        self.seconds["pooling"] += time.perf_counter() - middle
        return finite_vectors(out, self.use, self.precision)


class CropEmbedder(_TextMixin):
    """Training-free baseline: each mask's box crop, outside pixels set to CLIP's
    mean colour, through CLIP's image tower. Costs one CLIP pass per mask."""

    kind = "crop"

    def __init__(
        self, preset: PresetConfig, clip: Clip, device: torch.device, batch_size: int = 32, precision: str = "auto"
    ):
        self.preset = preset
        self.clip = clip
        self.model = clip.model.to(device).eval()
        self.device = device
        self.precision = precision  # CLIP's image tower's (``usesearch.devices.PRECISIONS``)
        self.batch_size = batch_size
        self.dim = clip.embed_dim
        self.text = TextEncoder(clip.model, clip.tokenizer, device)
        self.fingerprint = crop_fingerprint(preset, clip.native_image_size)
        self.towers_uncompiled = False  # compiled, CLIP's tower gave NaN where eager it did not: eager since

    def _crop_pixels(self, rgb: np.ndarray, mask: torch.Tensor, box: list[int]) -> torch.Tensor:
        x0, y0, x1, y1 = box
        crop = rgb[y0 : y1 + 1, x0 : x1 + 1].copy()
        mean_rgb = np.round(np.asarray(self.clip.mean) * 255).astype(np.uint8)
        crop[~mask[y0 : y1 + 1, x0 : x1 + 1].numpy()] = mean_rgb
        side = max(crop.shape[:2])
        # Centre on a mean-colour square so the crop keeps its aspect ratio.
        square = np.empty((side, side, 3), np.uint8)
        square[:] = mean_rgb
        top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        return letterbox(square, self.clip.native_image_size, self.clip.mean, self.clip.std)

    @torch.inference_mode()
    def embed_segments(self, image, masks) -> np.ndarray:
        rgb = to_rgb_array(image)
        masks = as_masks(
            masks.decode() if isinstance(masks, RleStack) else masks, rgb.shape[:2]
        ).cpu()  # cut on the host
        if len(masks) == 0:
            return np.zeros((0, self.dim), np.float32)
        if not bool(masks.flatten(1).any(1).all()):  # any(): no int64 copy of the stack
            raise BadArgumentError("empty mask: every segment needs at least one pixel")
        boxes = batched_mask_to_box(masks).tolist()
        out = self._crop_vectors(rgb, masks, boxes)
        if not _finite(out):  # as USEEmbedder's towers: a compiler's wrong code costs the compiling
            said = "CLIP's image tower gave NaN or infinite numbers compiled: it runs uncompiled"
            again = rerun_uncompiled(self.model.visual, lambda: self._crop_vectors(rgb, masks, boxes), _finite, said)
            if again is not None:
                self.towers_uncompiled, out = True, again
        return finite_vectors(out, self.model, self.precision)

    def _crop_vectors(self, rgb: np.ndarray, masks: torch.Tensor, boxes: list) -> np.ndarray:
        """Unit vectors [N, dim] of each mask's crop, ``batch_size`` crops a tower call."""
        out = []
        for start in range(0, len(masks), self.batch_size):
            batch = torch.stack(
                [
                    self._crop_pixels(rgb, masks[i], boxes[i])
                    for i in range(start, min(start + self.batch_size, len(masks)))
                ]
            )
            with bf16_autocast(self.device, self.precision):
                features = run_or_uncompile(
                    self.model.visual, lambda: self.model.encode_image(batch.to(self.device)), "CLIP's image tower"
                )
            out.append(F.normalize(features.float(), dim=-1))
        return torch.cat(out).cpu().numpy()


def _finite(vectors: np.ndarray) -> bool:
    return bool(np.isfinite(vectors).all())


def finite_vectors(vectors: np.ndarray, model: nn.Module, precision: str) -> np.ndarray:
    """``vectors``, refused (``ModelOutputError``) where any is NaN or infinite: FAISS
    would store it as it is, and it would rank as nothing or as everything."""
    if not _finite(vectors):
        device = next(model.parameters()).device
        computed = "bfloat16" if uses_bf16(device, precision) else "float32"
        raise model_output_error("the segment embedder gave", computed, compiled_within(model))
    return vectors


__all__ = ["USE", "USEEmbedder", "CropEmbedder", "SegmentEmbedder"]
