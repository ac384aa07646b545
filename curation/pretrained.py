"""Loading a transformers model and its processor for a curation stage."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from usesearch.errors import UsesearchError, first_line


class PretrainedStage:
    """A curation stage around a transformers model and its processor, the model in
    eval mode on ``device``."""

    def __init__(self, model: Any, processor: Any, device: Any = "cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device

    def model_identity(self) -> str:
        """The model as its cache keys name it: hub id or folder, and the commit when
        known, so a cached output is never reused for another model."""
        config = getattr(self.model, "config", None)
        name = getattr(config, "_name_or_path", "") or type(self.model).__name__
        if os.path.isdir(name):  # a local folder: the same one however it was typed, another one under its name not
            return f"{os.path.realpath(name)}#{folder_digest(name)}"
        commit = getattr(config, "_commit_hash", None)
        return f"{name}@{commit}" if commit else name


def folder_digest(folder: str) -> str:
    """A model folder's contents, cheaply: its JSON files whole (config, tokenizer) and
    its other files by name and size (gigabytes of weights are not hashed per run)."""
    digest = hashlib.sha256()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file():
            continue
        digest.update(f"{entry.name}:{entry.stat().st_size};".encode())
        if entry.name.endswith(".json"):
            with open(entry.path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def load_pretrained(model_class: Any, name: str, what: str, tiny_flag: str, **options: Any) -> tuple[Any, Any]:
    """(model, processor) of ``name``, a hub id in the Hugging Face cache or a local
    folder, both loaded with ``options`` (revision, trust_remote_code); or an error
    that says how to get them. ``what`` names the model in that error, and
    ``tiny_flag`` the flag of its offline stand-in (``curation.tiny``), offered as
    SAM's missing weights offer ``--preset tiny``."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name, **options)
        model = model_class.from_pretrained(name, **options)
    except OSError as exc:
        why = first_line(exc).rstrip(".")  # (transformers' own ends in one: it read "cached files..")
        raise UsesearchError(
            f"{what} {name!r} is not available: {why}. Download it where the network is reachable (it lands "
            f"in the Hugging Face cache), or pass a local folder. Or try the pipeline with `{tiny_flag}` "
            "(seeded random weights: runs offline, finds nothing real)."
        ) from None
    return model, processor
