"""Head checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (what they fit).

The JSON records the preset and its backbone configs; loading onto other
backbones is refused, because the LLN weights only mean something for the
backbone features they were trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from usesearch.errors import CheckpointMismatchError, UsesearchError, first_line
from usesearch.io.atomic import write_atomic
from usesearch.models.config import PresetConfig
from usesearch.models.head_files import checkpoint_paths as checkpoint_paths
from usesearch.models.head_files import is_checkpoint as is_checkpoint
from usesearch.models.weights import file_fault

FORMAT = "usesearch-head"
VERSION = 1


def state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def save_head(
    path: str | os.PathLike, state: dict[str, torch.Tensor], preset: PresetConfig, extra: dict[str, Any] | None = None
) -> Path:
    weights, config = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "preset": preset.name,
        "backbones": preset.backbone_dict(),
        "lln_dim": preset.head.lln_dim,
        "sha256": state_digest(tensors),
        **(extra or {}),
    }
    # Write-then-rename so a crash never leaves a half-written checkpoint.
    write_atomic(weights, lambda p: save_file(tensors, str(p)))
    write_atomic(config, json.dumps(meta, indent=2))
    return weights


def read_head_config(path: str | os.PathLike) -> dict[str, Any]:
    weights, config = checkpoint_paths(path)
    if not (weights.is_file() and config.is_file()):
        lacking = " and ".join(str(p) for p in (weights, config) if not p.is_file())  # (one of two: that one named)
        pickle = Path(path).suffix in (".pt", ".pth", ".bin", ".ckpt") and Path(path).is_file()
        # A training run's optimizer state (``trainer.safetensors``) beside its heads: not one of them.
        trainer = weights.name == "trainer.safetensors" and weights.is_file()
        raise UsesearchError(
            f"no head checkpoint at {path}: {lacking} {'is' if ' and ' not in lacking else 'are'} missing"
            + (
                "; a PyTorch pickle is never loaded (a head is safetensors + JSON, as `usesearch train` writes)"
                * pickle
            )
            + (f"; {weights} is a training run's optimizer state: its head is {weights.parent / 'head'}" * trainer)
        )
    try:
        meta = json.loads(config.read_text())
    except (OSError, ValueError) as exc:  # not JSON, or not text
        raise UsesearchError(f"{config} is not a usesearch head config: {first_line(exc)}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UsesearchError(f"{config} is not a usesearch head config (format={found!r})")
    if not isinstance(meta.get("backbones"), dict) or not all(
        isinstance(meta["backbones"].get(part), dict) for part in ("clip", "dino")
    ):
        raise UsesearchError(f"{config} is damaged: it does not name the backbones the head was trained for")
    version = meta.get("version", VERSION)  # (heads written before the field: the first version)
    if not (isinstance(version, int) and 1 <= version <= VERSION):  # (a newer one loaded as if it were ours)
        newer = "newer than this usesearch reads: upgrade usesearch" if isinstance(version, int) else "damaged"
        raise UsesearchError(
            f"{config} is a head of format version {version!r} (this usesearch reads 1-{VERSION}): {newer}"
        )
    from usesearch.models.presets import PRESETS

    if meta.get("preset") not in PRESETS:  # ("unknown preset '5'" read as a --preset the user typed)
        raise UsesearchError(
            f"{config} names preset {meta.get('preset')!r}, which this usesearch does not have ({', '.join(PRESETS)})"
        )
    return meta


def load_head(path: str | os.PathLike, preset: PresetConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and config of a head checkpoint, refusing one made for other backbones."""
    meta = read_head_config(path)
    # JSON round-trips tuples as lists; compare in JSON form.
    expected = json.loads(json.dumps(preset.backbone_dict()))
    if meta.get("backbones") != expected or meta.get("lln_dim") != preset.head.lln_dim:
        trained = (
            f"CLIP {meta['backbones']['clip'].get('model_name')}, DINOv2 {meta['backbones']['dino'].get('timm_name')}"
        )
        own = f"CLIP {preset.clip.model_name}, DINOv2 {preset.dino.timm_name}"
        trained += " with other settings" if trained == own else ""  # (a depth, a head width)
        if meta.get("preset") == preset.name:  # (it said "trained for preset 'b16' … cannot be loaded onto 'b16'")
            raise CheckpointMismatchError(
                f"head checkpoint {path} names preset {preset.name!r} in its config but was trained for other "
                f"backbones ({trained}) than that preset's ({own}): it cannot be loaded onto it"
            )
        raise CheckpointMismatchError(
            f"head checkpoint {path} was trained for preset {meta.get('preset')!r} ({trained}) "
            f"and cannot be loaded onto preset {preset.name!r} ({own})"
        )
    weights = checkpoint_paths(path)[0]
    fault = file_fault(weights)
    if fault is not None:
        raise UsesearchError(f"head checkpoint {weights} is damaged: {fault}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type, whatever it reads
        raise UsesearchError(f"head checkpoint {weights} cannot be read: {first_line(exc)}") from None
    if "sha256" in meta and state_digest(state) != meta["sha256"]:
        raise UsesearchError(f"head checkpoint {path}: its weights are not the ones its config names (sha256 differs)")
    return state, meta
