"""Dataclass configs for the backbones and the USE head.

A preset (see ``presets.py``) is one ``PresetConfig``; everything that changes
the embedding space is in it, so its JSON form is part of the model fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """What the USE encoder needs of either backbone: the side of the image fed to it
    and its patch size (their ratio is the patch grid, which must be the same for both
    backbones), and the seed of its weights where they are seeded-random."""

    image_size: int
    patch_size: int
    seed: int = 0


@dataclass(frozen=True)
class ClipConfig(BackboneConfig):
    """A CLIP model built by open_clip.

    ``model_name`` is an open_clip config name; ``custom_config`` (tiny preset)
    registers a config of that name with ``open_clip.add_model_config`` first.
    ``image_size`` is the side fed to the image tower for the USE encoder;
    open_clip interpolates the positional embedding when it differs from the
    checkpoint's.
    """

    model_name: str
    pretrained: str | None
    custom_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class DinoConfig(BackboneConfig):
    """A DINOv2 ViT built by timm (``pretrained`` selects its hub weights)."""

    timm_name: str
    pretrained: bool
    last_blocks: int = 6  # paper §3.2 / §4.2: only the last 6 DINOv2 blocks
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamConfig:
    """A segment-anything model; ``checkpoint`` is a file name, not a path."""

    model_type: str  # one of usesearch.masks.sam.SAM_TYPES
    checkpoint: str | None
    url: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class HeadConfig:
    """Shape of the trainable part: LLN width and whether it starts random."""

    lln_dim: int
    seeded_random: bool = False  # only tiny: a deterministic random head ships
    seed: int = 0


@dataclass(frozen=True)
class PresetConfig:
    name: str
    description: str
    clip: ClipConfig
    dino: DinoConfig
    sam: SamConfig
    head: HeadConfig

    @property
    def grid(self) -> int:
        """Patch grid side; presets are validated to give both backbones the same one."""
        return self.clip.image_size // self.clip.patch_size

    def validate(self) -> None:
        for part in (self.clip, self.dino):
            if part.image_size % part.patch_size:
                raise ValueError(
                    f"preset {self.name!r}: image size {part.image_size} is not a multiple "
                    f"of patch size {part.patch_size}"
                )
        dino_grid = self.dino.image_size // self.dino.patch_size
        if dino_grid != self.grid:
            raise ValueError(
                f"preset {self.name!r}: CLIP grid {self.grid} != DINOv2 grid {dino_grid}; "
                "patch embeddings must align cell for cell"
            )

    def backbone_dict(self) -> dict[str, Any]:
        """What a head checkpoint must match to be loaded onto these backbones."""
        return {
            "clip": dataclasses.asdict(self.clip),
            "dino": dataclasses.asdict(self.dino),
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)
