"""SAM 3 (Meta, November 2025) for ``query --refine sam3``: given a photo and a noun
phrase, every instance of the phrase with a mask and a score. An optional extra
(``pip install -e '.[sam3]'``, the ``sam3`` package, SAM License); weights from
``$USESEARCH_HOME/sam3.pt`` (or Hugging Face's cache of ``facebook/sam3``), fetched
only by ``usesearch models pull sam3``; a seeded ``tiny`` SAM 3 for tests and offline runs.

The model is built in ``sam3_build`` (sam3's own classes, composed as its builder
composes them, at any size, adapted to run on a CPU and offline), its weights' whereabouts in
``sam3_weights`` (light: ``models list`` reads them without torch); here: which model and
the two steps a refined query runs. Adapted here:

* Checkpoints load with ``weights_only=True``, the ``detector.`` keys as sam3's loader
  reads them; a checkpoint missing any key is refused.
* Photos go in as RGB arrays through sam3's processor's transform (the processor
  itself misreads an HWC array), and the text is encoded once per query, not once
  per photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from usesearch.devices import bf16_autocast, resolve_device
from usesearch.errors import MissingWeightsError, UsesearchError
from usesearch.io.files import stat_signature
from usesearch.masks.sam3_build import TINY, Sam3Architecture, build_sam3, fill_uninitialised, import_sam3
from usesearch.masks.sam3_weights import CHECKPOINT, HF_REPO, sam3_status
from usesearch.models.backbones import seeded, weights_to_come
from usesearch.models.weights import damaged


@dataclass(frozen=True)
class Sam3Config:
    name: str
    architecture: Sam3Architecture  # its checkpoint: ``sam3_weights.SAM3_CHECKPOINTS[name]``
    threshold: float = 0.5  # instances scoring above this are kept (sam3's processor default)
    seed: int = 0


SAM3_MODELS = {
    "sam3": Sam3Config("sam3", Sam3Architecture()),
    # Random weights score every instance near 0.3: a threshold they pass, so the plumbing shows.
    "tiny": Sam3Config("tiny", TINY, threshold=0.0, seed=3),
}


def load_checkpoint(model: Any, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: one line
        raise UsesearchError(f"{path} is not a SAM 3 checkpoint: {exc}") from None
    if not isinstance(state, dict):  # a whole pickle of something else
        raise UsesearchError(f"{path} is not a SAM 3 checkpoint: it holds a {type(state).__name__}, not weights")
    if isinstance(state.get("model"), dict):
        state = state["model"]
    detector = {k.replace("detector.", "", 1): v for k, v in state.items() if k.startswith("detector.")}
    own = model.state_dict()
    for key, value in detector.items():  # torch would say it in a paragraph per weight
        if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
            raise UsesearchError(
                f"{path} is not this SAM 3's checkpoint: {key} is {tuple(value.shape)}, the model's "
                f"{tuple(own[key].shape)} (another model size or version)"
            )
    missing, _ = model.load_state_dict(detector, strict=False)
    if missing:
        raise UsesearchError(
            f"{path} is not a SAM 3 image checkpoint: {len(missing)} weights missing ({missing[0]}, ...)"
        )


@dataclass(frozen=True)
class Instances:
    """What SAM 3 found of one phrase in one photo, on the model's device: ``masks``
    bool [N, H, W] at the photo's size, ``boxes`` [N, 4] x0, y0, x1, y1 in pixels,
    ``scores`` [N] (presence x instance probability), best first."""

    masks: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor


class Sam3Model:
    """A loaded SAM 3 split into its two costs: ``encode_image`` (the image step, once
    per photo; its features are what a cache keeps) and ``segment`` (per phrase)."""

    def __init__(self, config: Sam3Config, model: Any, device: torch.device, identity: str):
        """``model``: a sam3 ``Sam3Image`` (untyped: the package has no type hints)."""
        self.config, self.model, self.device, self.identity = config, model, device, identity
        self.image_size = config.architecture.image_size
        self._position = model.backbone.vision_backbone.position_encoding

    def encode_image(self, rgb: np.ndarray) -> list[torch.Tensor]:
        """RGB uint8 [H, W, 3] -> the image features (sam3's ``backbone_fpn``)."""
        return self.encode_images([rgb])[0]

    @torch.inference_mode()
    def encode_images(self, rgbs: list[np.ndarray]) -> list[list[torch.Tensor]]:
        """``encode_image`` for several photos in one batch (each gets what it gets alone,
        to float rounding: tested)."""
        from torchvision.transforms.v2 import functional as TF

        # sam3's processor's transform: resized as uint8, then scaled to [-1, 1].
        size = [self.image_size, self.image_size]
        x = torch.stack(
            [
                TF.resize(torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1), size)
                for rgb in rgbs
            ]
        )
        x = (x.float() / 255 - 0.5) / 0.5
        with bf16_autocast(self.device):
            levels = self.model.backbone.forward_image(x)["backbone_fpn"]
        if len(rgbs) == 1:
            return [list(levels)]
        # Copies, so a cache holding one photo's features does not hold the whole batch's.
        return [[level[i : i + 1].clone() for level in levels] for i in range(len(rgbs))]

    @torch.inference_mode()
    def encode_text(self, text: str) -> dict:
        with bf16_autocast(self.device):
            return self.model.backbone.forward_text([text], device=self.device)

    def segment(
        self, features: list[torch.Tensor], text: dict, hw: tuple[int, int], threshold: float | None = None
    ) -> Instances:
        """The phrase (``encode_text``'s output) in the photo whose ``features`` are
        given, as sam3's processor reports it: masks upsampled to ``hw``."""
        return self.segment_many([features], text, [hw], threshold)[0]

    @torch.inference_mode()
    def segment_many(
        self,
        features: list[list[torch.Tensor]],
        text: dict,
        hws: list[tuple[int, int]],
        threshold: float | None = None,
    ) -> list[Instances]:
        """``segment`` for several photos in one batch (one find query per photo, all
        with the same phrase): what each photo gets alone, to float rounding (tested)."""
        from sam3.model.data_misc import FindStage

        threshold = self.config.threshold if threshold is None else threshold
        n = len(features)
        levels = [
            torch.cat([photo[i] for photo in features]) if n > 1 else features[0][i] for i in range(len(features[0]))
        ]
        backbone_out = {
            "backbone_fpn": levels,
            "vision_features": levels[-1],
            "vision_pos_enc": [self._position(f).to(f.dtype) for f in levels],
            "sam2_backbone_out": None,
            **text,
        }
        ids = torch.arange(n, device=self.device)
        find = FindStage(
            img_ids=ids,
            text_ids=torch.zeros_like(ids),
            input_boxes=None,
            input_boxes_mask=None,
            input_boxes_label=None,
            input_points=None,
            input_points_mask=None,
        )
        with bf16_autocast(self.device):
            out = self.model.forward_grounding(
                backbone_out=backbone_out,
                find_input=find,
                geometric_prompt=self.model._get_dummy_prompt(n),
                find_target=None,
            )
        presence = out["presence_logit_dec"].float().sigmoid().unsqueeze(1)
        all_scores = (out["pred_logits"].float().sigmoid() * presence).squeeze(-1)
        found = []
        for b, (h, w) in enumerate(hws):
            scores = all_scores[b]
            order = torch.argsort(scores, descending=True)
            order = order[scores[order] > threshold]
            cx, cy, bw, bh = out["pred_boxes"][b, order].float().unbind(-1)
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            boxes = boxes * torch.tensor([w, h, w, h], device=boxes.device, dtype=boxes.dtype)
            found.append(Instances(full_size_masks(out["pred_masks"][b, order], (h, w)), boxes, scores[order]))
        return found


def full_size_masks(logits: torch.Tensor, hw: tuple[int, int], chunk: int = 8) -> torch.Tensor:
    """[N, h', w'] mask logits -> [N, H, W] bool at the photo's size, a few instances at a
    time: all at once held two float32 copies of every instance at full size (a 24 MP
    photo's 16 instances: 3 GB)."""
    parts = [
        F.interpolate(part.float()[:, None], hw, mode="bilinear", align_corners=False).sigmoid()[:, 0] > 0.5
        for part in logits.split(chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros((0, *hw), dtype=torch.bool, device=logits.device)


def load_sam3(
    name: str = "sam3", checkpoint: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> Sam3Model:
    """SAM 3 in eval mode on ``device`` (default: CUDA when torch sees a GPU)."""
    if name not in SAM3_MODELS:
        raise UsesearchError(f"unknown SAM 3 model {name!r}; choose one of {', '.join(SAM3_MODELS)}")
    cfg = SAM3_MODELS[name]
    device = resolve_device(device)
    import_sam3()
    status = sam3_status(name, checkpoint)
    if status.fault is not None:
        raise UsesearchError(damaged(status, "sam3"))
    if status.needed and status.path is None:
        raise MissingWeightsError(
            f"SAM 3 weights are not on this machine: put {CHECKPOINT} at {status.expected}, or run "
            f"`usesearch models pull sam3` where hf.co/{HF_REPO} is reachable (gated: accept its licence, then "
            "`hf auth login`); an index built with --preset tiny refines with the seeded tiny SAM 3 instead"
        )
    # A checkpoint missing any weight is refused (``load_checkpoint``): its init need not be drawn.
    with seeded(cfg.seed), weights_to_come(status.path is not None):
        model = build_sam3(cfg.architecture)
        if status.path is None:
            fill_uninitialised(model)
    if status.path is not None:
        load_checkpoint(model, status.path)
        # Its features are cached under this: a fine-tuned checkpoint copied over it with
        # `cp -p` has the same size and mtime, never the same ctime.
        identity = f"{name}-{stat_signature(status.path.stat()).replace(':', '-')}"
    else:
        identity = f"{name}-seed{cfg.seed}"
    return Sam3Model(cfg, model.to(device), device, f"{identity}-{device.type}")
