"""The trainer's own checkpoint beside the step heads: the step it names, the
optimizer's and the schedule's state, in one safetensors file (``TRAINER_FILE``): the
optimizer's tensors as tensors, everything else as JSON in its header, with the SHA-256
of both (a damaged file is refused, not resumed into another run). Never a pickle:
a run folder may come from anyone, and its file is read before anything is checked.

One file, replaced atomically, so the step it names and the state beside it always
agree. Runs written before it kept the same state in ``trainer.pt`` (``torch.save``),
still read, with ``weights_only=True``. ``resumable_settings``: what a resume must
start from as its run did."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from usesearch.errors import UsesearchError
from usesearch.io.atomic import write_atomic
from usesearch.models.checkpoint import state_digest

from .config import TrainConfig, changed_settings, refuse_changes

TRAINER_FILE = "trainer.safetensors"
OLD_TRAINER_FILE = "trainer.pt"  # runs from before: a torch.save archive
FORMAT, VERSION = "usesearch-trainer", 1


def trainer_file(run_dir: str | os.PathLike) -> Path | None:
    """The trainer checkpoint of a run folder (None: it has none)."""
    for name in (TRAINER_FILE, OLD_TRAINER_FILE):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def write_trainer_state(
    run_dir: Path, step: int, optimizer: dict[str, Any], scheduler: dict[str, Any], counts: dict[str, int] | None = None
) -> None:
    """``optimizer`` and ``scheduler``: their ``state_dict()``s; ``counts``: the run's
    tallies to that step (its summary's, which a resumed run goes on counting)."""
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, dict[str, Any]]] = {}
    for param, entries in optimizer["state"].items():
        state[str(param)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                key = f"state.{param}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                state[str(param)][name] = {"tensor": key}
            else:
                state[str(param)][name] = {"value": value}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "optimizer": {"state": state, "param_groups": optimizer["param_groups"]},
        "scheduler": scheduler,
        "counts": counts or {},
    }
    header["sha256"] = _digest(header, tensors)
    metadata = {"trainer": json.dumps(header)}
    write_atomic(run_dir / TRAINER_FILE, lambda path: save_file(tensors, str(path), metadata=metadata))
    (run_dir / OLD_TRAINER_FILE).unlink(missing_ok=True)  # a run from before goes on in the new file


class NotTrainerState(ValueError):
    """A safetensors file that is not a trainer's state at all (a head copied over it),
    as against one damaged."""


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``{"step", "optimizer", "scheduler", "counts"}`` as written (an older file: no
    counts, ``{}``); any damage raises (the caller says it in one line)."""
    if path.name == OLD_TRAINER_FILE:
        old = torch.load(path, map_location="cpu", weights_only=True)
        return {"step": int(old["step"]), "optimizer": old["optimizer"], "scheduler": old["scheduler"], "counts": {}}
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        if "trainer" not in metadata:  # (a KeyError said "damaged ('trainer')")
            raise NotTrainerState("not a training run's state: it has no trainer header (a head's weights?)")
        header = json.loads(metadata["trainer"])
        if header.get("format") != FORMAT:
            raise NotTrainerState(f"not a usesearch trainer checkpoint (format {header.get('format')!r})")
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    recorded = header.pop("sha256", None)  # (files from before it: read unchecked)
    if recorded is not None and _digest(header, tensors) != recorded:
        raise ValueError("its contents are not the ones its header names (sha256 differs)")
    state = {
        int(param): {name: tensors[v["tensor"]] if "tensor" in v else v["value"] for name, v in entries.items()}
        for param, entries in header["optimizer"]["state"].items()
    }
    optimizer = {"state": state, "param_groups": header["optimizer"]["param_groups"]}
    counts = {str(k): int(v) for k, v in (header.get("counts") or {}).items()}
    return {"step": int(header["step"]), "optimizer": optimizer, "scheduler": header["scheduler"], "counts": counts}


def _digest(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the header (its own digest left out) and the tensors: a flipped byte in
    the optimizer's moments resumed silently into another run than the one written."""
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(state_digest(tensors).encode())
    return digest.hexdigest()


def resumable_settings(
    out: Path, step: int, meta: dict[str, Any], cfg: TrainConfig, data: dict[str, Any], say: Callable[[str], object]
) -> TrainConfig:
    """``--resume``: the settings that shape the run's schedule (``SCHEDULE``, its skipped
    kinds) and its data must be those it started with, else a one-line refusal; the
    config it goes on with (its resize rule as it began), said where its precision changed."""
    anew = f"train anew in another --run-dir (or move {out} away first)"
    started, started_on = meta.get("train_config") or {}, meta.get("data", data)
    if not isinstance(started, dict) or not isinstance(started_on, dict):
        raise UsesearchError(f"--resume: the head of step {step} is damaged (its train_config or data); {anew}")
    refuse_changes(out, changed_settings(started, cfg))
    # A run started before the resize scaled the photo as inference shows it goes on as
    # it started (its resumed steps are those of the uninterrupted run).
    cfg = replace(cfg, resize_base=started.get("resize_base", "photo"))
    if started.get("precision", cfg.precision) != cfg.precision:  # (allowed: a run moved to a GPU)
        say(
            f"--precision {cfg.precision} from step {step + 1}, where the run began in "
            f"{started['precision']}: its head is no longer the uninterrupted run's bit for bit"
        )
    if {key: data[key] for key in started_on if key in data} != started_on:  # older runs: no content
        raise UsesearchError(
            f"--resume continues the run in {out} on the data it started on: "
            f"{started_on['images']} images (now {data['images']}"
            + (")" if started_on["images"] != data["images"] else ", other ones, masks or texts, or in another order)")
            + "; give the same dataset folders, or start a new run in another --run-dir"
        )
    return cfg
