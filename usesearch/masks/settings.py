"""What a masker takes and is: SAM's settings as one typed object, named as
segment-anything's ``SamAutomaticMaskGenerator`` names them (the CLI's flags are these
names with dashes), and the record each masker has in the registry
(``usesearch.masks.registry.MASKERS``). A light module: the CLI builds the settings
before any model is imported."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from usesearch.models.config import PresetConfig


@dataclass(frozen=True)
class SamSettings:
    """None: the masker's own default (segment-anything's for ``sam`` and ``sam2``;
    curation's box prompts keep the paper's 0.6 thresholds). ``encoder_batch`` is
    this project's: photos per image-encoder call, no setting of the masks themselves."""

    points_per_side: int | None = None
    points_per_batch: int | None = None
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    box_nms_thresh: float | None = None
    crop_n_layers: int | None = None
    min_mask_region_area: int | None = None
    encoder_batch: int | None = None

    def given(self) -> dict[str, Any]:
        """The settings set, as keyword arguments for a masker."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    @staticmethod
    def flag(name: str) -> str:
        """The command line's spelling of a setting."""
        return "--" + name.replace("_", "-")


SAM_SETTINGS = tuple(f.name for f in fields(SamSettings))


class Masker(Protocol):
    """What every masker is: named, its settings recorded with the index, and a
    callable from an RGB photo (and its path, for maskers that look masks up) to its
    proposals (``proposals.Proposal``)."""

    name: str

    def params(self) -> dict: ...

    def __call__(self, rgb: np.ndarray, path: str | None = None) -> list[Any]: ...


@dataclass(frozen=True)
class MaskerKind:
    """One masker of the registry: how it is built and what it takes."""

    build: Callable[[PresetConfig, str | torch.device | None, dict[str, Any]], Masker]
    description: str
    # Which of SAM's settings (``SamSettings``) it takes.
    settings: frozenset[str] = frozenset()
    # Its other keyword options; None: its generator's own, which the masker checks
    # against the generator's signature.
    options: tuple[str, ...] | None = ()
    # The command line's spelling of its own options, for messages.
    flags: str = ""
    # "trained": the masker when none is named and the preset's SAM has weights;
    # "random": when it has none (the tiny preset's random SAM gives noise).
    default_for: str = ""
    # The optional module it needs, installed by the pip extra of the same name.
    requires: str = ""
    # Runs under ``--precision`` (its generator's ``autocast``); the others compute in
    # float32 (SAM 2) or run no model.
    takes_precision: bool = False


# How the work is batched and its precision on a GPU: no setting of the masks'
# definition (``amg.py``), so not part of an index's identity; nor where a masks file
# lies (``--masker coco``: its content, ``masks_sha256``, defines them).
NOT_MASK_DEFINING = ("points_per_batch", "autocast", "encoder_batch", "masks_json")


def mask_defining(params: dict) -> dict:
    """A masker's settings that define its masks: another batch size may resume an index,
    and a masks file moved or renamed."""
    return {k: v for k, v in params.items() if k not in NOT_MASK_DEFINING}
