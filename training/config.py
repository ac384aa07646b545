"""A training run's settings (``TrainConfig``: the paper's §4.2 by default) and which
of them fix its schedule (``SCHEDULE``). Every checkpoint records them, and
``Trainer.resume`` compares them with the ones it is given: a resumed run keeps its
schedule."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from usesearch.curation.records import KINDS, SEGMENT_KINDS
from usesearch.errors import BadArgumentError, UsesearchError

from .loss import LOGIT_SCALE

MIN_CROP, MAX_CROP = 16, 2048  # past the backbones' inputs (560 at most), a crop is only resized down


@dataclass
class TrainConfig:
    preset: str = "b16"  # the CLI's (``factory.DEFAULT_PRESET``: real weights); "tiny" for trials
    epochs: int = 5  # paper §4.2
    batch_images: int = 32  # paper §4.2
    lr: float = 1e-3  # paper §4.2
    weight_decay: float = 0.01  # paper §4.2
    poly_power: float = 0.9  # paper §4.2
    crop: int = 560  # paper §4.2
    scale: tuple[float, float] = (0.5, 2.0)  # paper §4.2
    # What the random resize's factor scales: "crop", the photo as inference shows it (its
    # longest side at the crop); "photo", its own pixels, as runs started before 2026-12-06
    # did (a resumed one goes on so, as it started; ``Trainer.resume``).
    resize_base: str = "crop"
    # Texts of these kinds (``curation.records.KINDS``) left out, and a segment left with
    # none with them: e.g. ("crowd",), COCO's iscrowd regions, whose one class names many
    # objects under one mask.
    skip_kinds: tuple[str, ...] = ()
    logit_scale: float = LOGIT_SCALE
    checkpoint_every: int = 500
    max_steps: int | None = None
    seed: int = 0
    device: str | None = None
    # What the frozen backbones and the head compute in (``usesearch.devices.PRECISIONS``);
    # not part of the schedule: a run resumed in another precision goes on.
    precision: str = "auto"
    # Photos read, augmented and preprocessed at once, and the next batch made while
    # this one trains: on a GPU, one thread's JPEG decoding would be the step's floor.
    # Not part of the schedule: any number gives the same batches.
    loader_threads: int = min(8, os.cpu_count() or 1)
    # Step heads kept (the newest); None keeps every one (l14-336: ~126 MB each).
    keep_checkpoints: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A nan or infinite rate trains nothing and says so only as non-finite losses
        # many steps later; refused here, before a model loads.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BadArgumentError(f"lr {self.lr}: give a finite number above 0", "lr")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise BadArgumentError(f"weight_decay {self.weight_decay}: give a finite number, 0 or more", "weight_decay")
        # (numpy's generators, seeded by it with the epoch or step, refused a negative one
        # only at the first batch, after the run's folder was made, in words naming no option)
        if not 0 <= self.seed < 2**63:
            raise BadArgumentError(f"seed {self.seed}: give a whole number from 0 to 2**63-1", "seed")
        # The random resize draws the photo at up to twice the crop (its longest side):
        # a crop of 100,000 would decode every photo into 200,000 pixels a side.
        if self.resize_base not in ("crop", "photo"):
            raise ValueError(f"resize_base {self.resize_base!r}: give 'crop' or 'photo'")
        self.skip_kinds = tuple(sorted(set(self.skip_kinds)))  # one spelling in the run's records
        unknown = [kind for kind in self.skip_kinds if kind not in SEGMENT_KINDS]
        if unknown:  # ('caption' was taken and left nothing out: no segment's text is one)
            why = " no segment's text is a caption (it reaches them as its phrases and expressions);" * (
                unknown[0] in KINDS
            )
            raise BadArgumentError(
                f"skip kind {unknown[0]!r}:{why} give one of {', '.join(SEGMENT_KINDS)}", "skip_kind"
            )
        if not MIN_CROP <= self.crop <= MAX_CROP:
            raise BadArgumentError(
                f"crop {self.crop}: give a side from {MIN_CROP} to {MAX_CROP} pixels (the paper's: 560)", "crop"
            )


# The settings that fix a run's schedule: a resumed run keeps them.
SCHEDULE = ("epochs", "batch_images", "lr", "weight_decay", "max_steps", "seed", "crop")


def changed_settings(started: dict, now: TrainConfig, preset: str | None = None) -> list[str]:
    """What a resume would change of the run begun with ``started`` (its heads'
    ``train_config``), as flags: ``--batch-images 2 (now 32)``. ``preset``: the one given,
    where one was (None: the run's own is used). Every change at once: a refusal that
    named the preset alone was followed by a second one naming three more."""
    unset = lambda value: "not given" if value is None else value  # noqa: E731 (--max-steps None: the epochs')
    changed = []
    if preset is not None and isinstance(started.get("preset"), str) and started["preset"] != preset:
        changed.append(f"--preset {started['preset']} (now {preset})")
    changed += [
        f"--{name.replace('_', '-')} {unset(started[name])} (now {unset(getattr(now, name))})"
        for name in SCHEDULE
        if name in started and started[name] != getattr(now, name)
    ]
    skipped = tuple(started.get("skip_kinds", ()))  # (runs before the option: none)
    if skipped != now.skip_kinds:
        said = lambda kinds: " ".join(f"--skip-kind {k}" for k in kinds) or "no --skip-kind"  # noqa: E731
        changed.append(f"{said(skipped)} (now {said(now.skip_kinds)})")
    return changed


def refuse_changes(out, changed: list[str]) -> None:
    """The one-line refusal of a resume that would change ``changed`` (none: nothing)."""
    if changed:
        raise UsesearchError(
            f"--resume continues the run in {out} as it was started: {', '.join(changed)}; "
            "give those again, or start a new run in another --run-dir"
        )
