"""A training run's folder: what a run writes there, and whether a new run may start
in it (never over a run, nor over the user's own files)."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import NoReturn

from usesearch.errors import UsesearchError, first_few
from usesearch.io.atomic import temporary_of, write_atomic
from usesearch.io.own_folders import OS_FILES

from .config import TrainConfig, changed_settings, refuse_changes
from .trainer_state import TRAINER_FILE, trainer_file

LOCK_FILE = ".train.lock"  # one training run a run folder

LOG_HEADER = ["step", "epoch", "loss", "lr", "segments", "seconds"]
# What a run killed before its first checkpoint leaves (its log begins with LOG_HEADER):
# a new run there starts over them.
KILLED_RUN_FILES = re.compile(r"^(log\.csv|unreadable\.txt|step-\d+\.(safetensors|json))$")
# Every file a run writes through ``write_atomic``: a killed writer's temporary of one is ours to remove.
RUN_FILES = re.compile(r"^(log\.csv|unreadable\.txt|trainer\.safetensors|(head|step-\d+)\.(safetensors|json))$")


def check_new_run(out: str | os.PathLike) -> None:
    """A run folder that holds a run is continued with ``--resume``, never overwritten;
    one that holds other files is refused: a run writes ``log.csv``, ``head.*`` and
    ``unreadable.txt`` there, and would replace a user's files of those names."""
    if trainer_file(out) is not None:
        raise UsesearchError(f"{out} holds a run already: --resume continues it, or give another --run-dir")
    folder = Path(out)
    if not folder.is_dir():
        return
    killed_run = _is_run_log(folder / "log.csv")
    others = sorted(
        name
        for name in os.listdir(folder)
        if name not in (LOCK_FILE, *OS_FILES)
        and not _is_ours_temporary(name)
        and not (killed_run and KILLED_RUN_FILES.match(name))
    )
    if others:
        raise UsesearchError(
            f"{out} holds files that are not a training run's ({first_few(others)}): "
            "give --run-dir a new or empty folder"
        )


def writer_refusal(out: str | os.PathLike):
    """What the run folder's lock says to a second run."""

    def refusal(holder: str) -> Exception:
        return UsesearchError(f"another training run (pid {holder}) is writing to {out}; wait for it to finish")

    return refusal


def refuse_resume_without_state(out: str | os.PathLike) -> NoReturn:
    """``--resume`` of a folder with no trainer's state, before any model loads (the
    default preset's missing weights were said first): a run going there before its first
    checkpoint, a run whose state was deleted (its heads stay usable, but no optimizer to
    continue), or no run at all."""
    from usesearch.io.locks import one_writer

    folder = Path(out)
    if (folder / LOCK_FILE).is_file():  # a run going there before its first checkpoint: said as such
        with one_writer(folder / LOCK_FILE, writer_refusal(out)):
            pass
    heads = sorted(p.name for p in (*folder.glob("head.json"), *folder.glob("step-*.json")))
    if heads:
        raise UsesearchError(
            f"--resume: {out} holds a run's heads ({first_few(heads)}) but no {TRAINER_FILE}, its optimizer's "
            "state, to continue from; the heads stay usable: train anew in another --run-dir"
        )
    raise UsesearchError(
        f"--resume: {out} holds no checkpoint to continue (no {TRAINER_FILE}); without --resume a new run starts there"
    )


def resumed_preset(out: str | os.PathLike, given: str | None, now: TrainConfig) -> str | None:
    """The preset a resume of the run in ``out`` builds its models for: the one the run
    started with, as its heads record it (else the default preset's, whose weights a
    tiny run never needed, was loaded, and refused). Another one given is refused before
    any model loads, with every other setting ``now`` changes (``changed_settings``), as
    ``Trainer.resume`` refuses them.
    ``given`` where no head is readable: the resume then says what the folder lacks."""
    from usesearch.models.checkpoint import read_head_config

    if trainer_file(out) is None:
        return given
    folder = Path(out)
    heads = ["head", *sorted((p.stem for p in folder.glob("step-*.json")), reverse=True)]  # newest first
    for name in heads:
        try:
            meta = read_head_config(folder / name)
        except UsesearchError:
            continue
        config = meta.get("train_config")
        started = config.get("preset") if isinstance(config, dict) else None
        started = started if isinstance(started, str) else meta.get("preset")
        if not isinstance(started, str):
            continue
        refuse_changes(
            out, changed_settings({**(config if isinstance(config, dict) else {}), "preset": started}, now, given)
        )
        return started
    return given


# What a run that read no photo wrote and must not offer: its head and checkpoints
# learned nothing (its log and unreadable.txt, which say why, stay).
UNTRAINED_FILES = re.compile(r"^(trainer\.safetensors|(head|step-\d+)\.(safetensors|json))$")


def run_files_now(out: str | os.PathLike) -> dict[str, int]:
    """The folder's files a run writes, with their modification times (none: no folder)."""
    try:
        entries = list(os.scandir(os.fspath(out)))
    except FileNotFoundError:
        return {}
    return {e.name: e.stat().st_mtime_ns for e in entries if UNTRAINED_FILES.match(e.name)}


def drop_untrained(out: str | os.PathLike, before: dict[str, int]) -> int:
    """Remove the head and checkpoints a new run that trained on no photo wrote (those not
    in ``before``, ``run_files_now`` at its start, or rewritten since: an earlier killed
    run's step-* heads stay): an untrained head looked usable, and the folder refused the
    next run ("holds a run already"). The folder then holds what a run killed before its
    first checkpoint leaves, which a new run starts over. Returns the files removed."""
    removed = 0
    for name, mtime in run_files_now(out).items():
        if before.get(name) != mtime:
            os.unlink(Path(out) / name)
            removed += 1
    return removed


def _is_run_log(path: Path) -> bool:
    """A run's log: its header (or empty: a run killed in its first step, before a write reached the disk)."""
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), LOG_HEADER) == LOG_HEADER
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def is_run_file(name: str) -> bool:
    """A file a run writes (through ``write_atomic``): a killed writer's temporary of one is ours."""
    return RUN_FILES.match(name) is not None


def _is_ours_temporary(name: str) -> bool:
    replaced = temporary_of(name)
    return replaced is not None and is_run_file(replaced)


def trim_log(out: Path, step: int) -> None:
    """Drop the log rows of steps past the checkpoint's ``step``: they will be trained, and
    logged, again."""
    log_path = out / "log.csv"
    if not log_path.is_file():
        return
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= step]

    def write(target: Path) -> None:
        with open(target, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    write_atomic(log_path, write)
