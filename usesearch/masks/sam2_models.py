"""SAM 2.1 for ``--masker sam2``: the ``sam2`` package's own configs and builder
(an optional extra: ``pip install -e '.[sam2]'``), checkpoints from
``$USESEARCH_HOME`` (or a path), and a ``tiny`` model (SAM 2.1 Hiera-T at a
256-px input, seeded random weights) for tests and offline runs.

Checkpoints are loaded here with ``weights_only=True`` rather than by
``sam2.build_sam``, which unpickles them fully."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from usesearch.errors import MissingExtraError, UsesearchError
from usesearch.models.weights import WeightStatus, file_fault, require, usesearch_home, verify_sha256

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RELEASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


@dataclass(frozen=True)
class Sam2Config:
    config: str  # the sam2 package's hydra config
    checkpoint: str | None  # file name under $USESEARCH_HOME; None: seeded random
    image_size: int = 1024
    sha256: str | None = None  # not published by the release; checked when set
    seed: int = 0


SAM2_MODELS = {
    "tiny": Sam2Config("configs/sam2.1/sam2.1_hiera_t.yaml", None, image_size=256, seed=5),
    "hiera_t": Sam2Config("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "hiera_s": Sam2Config("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "hiera_b+": Sam2Config("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "hiera_l": Sam2Config("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}


def sam2_status(name: str, checkpoint: str | os.PathLike | None = None) -> WeightStatus:
    cfg = SAM2_MODELS[name]
    if cfg.checkpoint is None and checkpoint is None:
        return WeightStatus("sam2", name, False, None, "", "seeded random")
    expected = os.fspath(checkpoint) if checkpoint else os.fspath(usesearch_home() / str(cfg.checkpoint))
    from pathlib import Path

    found = Path(expected) if Path(expected).exists() else None  # a folder there: a fault, not missing
    return WeightStatus(
        "sam2", f"SAM 2.1 {name}", True, found, expected, RELEASE + str(cfg.checkpoint), file_fault(found)
    )


def load_sam2(name: str, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """A SAM2Base model in eval mode."""
    if name not in SAM2_MODELS:
        raise UsesearchError(f"unknown SAM 2 model {name!r}; choose one of {', '.join(SAM2_MODELS)}")
    try:
        from sam2.build_sam import build_sam2
    except ImportError:
        raise MissingExtraError("--masker sam2 needs the sam2 package: pip install -e '.[sam2]'") from None
    import torch  # here, not at the top: `models list` reads this module's table without torch

    from usesearch.models.backbones import seeded, weights_to_come

    cfg = SAM2_MODELS[name]
    status = sam2_status(name, checkpoint)
    path = require(status, f"sam2:{name}") if status.needed else None
    overrides = [f"++model.image_size={cfg.image_size}"] if cfg.image_size != 1024 else []
    with seeded(cfg.seed), weights_to_come(path is not None):  # loaded strictly below
        model = build_sam2(cfg.config, ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=overrides)
    if path is not None:
        if checkpoint is None:
            verify_sha256(path, cfg.sha256)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"] if "model" in state else state)
        except Exception as exc:
            raise UsesearchError(f"{path} is not a SAM 2.1 {name} checkpoint: {exc}") from None
    return model.to(device).eval()


def automatic_mask_generator(model, **options):
    """``SAM2AutomaticMaskGenerator`` with RLE output. Its image predictor assumes the
    1024-px input's feature sizes; they follow the model's input size here. Two of the
    package's faults mended: a crop with no mask (``--crop-n-layers``) failed the photo,
    and without its CUDA extension ``--min-mask-region-area`` warned in ten lines a
    prompt batch."""
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    class Generator(SAM2AutomaticMaskGenerator):
        def _process_crop(self, *args, **kwargs):
            data = super()._process_crop(*args, **kwargs)
            if len(data["rles"]) == 0:  # its crop boxes, torch.tensor([]), are 1-D: the crops' NMS
                data["crop_boxes"] = torch.zeros((0, 4))  # indexed them [:, 2] (IndexError)
            return data

    with warnings.catch_warnings():  # its predictor scripts its transforms with torch.jit, which torch warns of
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        generator = Generator(model, output_mode="coco_rle", **options)
    side = model.image_size // 4
    generator.predictor._bb_feat_sizes = [(side, side), (side // 2, side // 2), (side // 4, side // 4)]
    transforms = generator.predictor._transforms
    on_gpu = next(model.parameters()).device.type == "cuda"
    if (transforms.max_hole_area > 0 or transforms.max_sprinkle_area > 0) and not (on_gpu and _has_cuda_extension()):
        # The predictor's low-res hole filling needs sam2's CUDA extension and a GPU; without
        # them, it catches the error and warns at every prompt batch, its masks as if it were
        # off. Off it is, said once; the generator's own small-region removal (OpenCV) still runs.
        log.warning(
            "sam2's low-res hole filling needs its CUDA extension on a GPU: skipped here (small regions still removed)"
        )
        transforms.max_hole_area = transforms.max_sprinkle_area = 0
    return generator


def _has_cuda_extension() -> bool:
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def pull_sam2(name: str) -> list[str]:
    """``usesearch models pull sam2:NAME``: fetch a SAM 2.1 checkpoint into $USESEARCH_HOME."""
    from pathlib import Path

    from usesearch.models.weights import _download, damaged

    if name not in SAM2_MODELS:
        raise UsesearchError(f"unknown SAM 2 model {name!r}; choose one of {', '.join(SAM2_MODELS)}")
    status = sam2_status(name)
    if status.fault is not None:  # a file of the user's, not ours to delete; a download beside it would not be read
        raise UsesearchError(damaged(status, f"sam2:{name}"))
    if not status.needed:  # said as `models pull tiny` says it, not "already present"
        return [f"sam2:{name} has no weights to pull: its model is seeded random"]
    if status.present:
        return []
    _download(status.source, Path(status.expected), SAM2_MODELS[name].sha256)
    return [f"sam2: downloaded {status.expected}"]
