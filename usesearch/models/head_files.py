"""Where a head checkpoint's two files lie, given any of the ways a head is named (its
folder, ``NAME``, ``NAME.safetensors``, ``NAME.json``): read without torch, so that a
command line naming a head is checked before the model libraries load."""

from __future__ import annotations

import os
from pathlib import Path


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Accepts ``DIR`` (holding head.*), ``NAME.safetensors``, ``NAME.json`` or ``NAME``."""
    path = Path(path)
    if path.is_dir():
        return path / "head.safetensors", path / "head.json"
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def is_checkpoint(path: str | os.PathLike) -> bool:
    weights, config = checkpoint_paths(path)
    return weights.is_file() and config.is_file()
