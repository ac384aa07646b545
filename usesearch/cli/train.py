"""CLI wiring for training: ``usesearch train``."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from usesearch.cli import options as opts
from usesearch.curation.records import SEGMENT_KINDS
from usesearch.errors import BadArgumentError, DiskFullError, first_few, is_disk_full
from usesearch.reports import counted

app = opts.Typer()


@app.command()
@opts.user_errors
def train(
    datasets: Annotated[
        list[Path], typer.Argument(help="Curated dataset folders (usesearch curate run).", exists=True, file_okay=False)
    ],
    run_dir: Annotated[
        Path,
        typer.Option(
            "--run-dir",
            help="Run folder: head checkpoints, optimizer state, log.csv.",
            callback=opts.folder_for("a training run"),
        ),
        opts.Formerly("--out"),
    ],
    preset: Annotated[
        Optional[str],
        typer.Option(
            "--preset",
            "-p",
            help="Model preset whose frozen image towers the head learns on: b16 (the default), l14-336 (the "
            "paper's), or tiny (random weights, for trials).",
            callback=opts.known_preset,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training data.")] = 5,
    batch_images: Annotated[int, typer.Option(min=1, help="Images per batch (all their segments).")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW's learning rate, decayed polynomially (power 0.9) to 0.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW's weight decay.")] = 0.01,
    crop: Annotated[
        int, typer.Option(help="Random square crop after the random resize, in pixels (16 to 2048).")
    ] = 560,
    max_steps: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Train exactly this many steps, fewer or more than --epochs gives (the schedule decays over them).",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Write a step-N head and the trainer's state every this many steps.")
    ] = 500,
    keep_checkpoints: Annotated[
        Optional[int],
        typer.Option(min=1, help="Keep only the newest N step-* heads (default: all; l14-336's are ~126 MB each)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --run-dir where it stopped (the same settings; --preset may be left out).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seeds the batches' order, the crops and the texts drawn.")] = 0,
    skip_kind: Annotated[
        Optional[list[str]],
        typer.Option(
            "--skip-kind",
            help="Leave out texts of this kind (repeatable), e.g. crowd: COCO's iscrowd regions, one class over many "
            "objects. Kinds: " + ", ".join(SEGMENT_KINDS) + ".",
        ),
    ] = None,
    device: opts.DeviceOpt = None,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="What the image towers and the head's forward compute in: auto (bfloat16 on a GPU that has it, "
            "else float32), float32, or bfloat16 (the head's weights stay float32).",
        ),
    ] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's summary as JSON on stdout (status lines go to stderr).")
    ] = False,
) -> None:
    """Train the USE head (LLNs, block scales, projection) with the segment-text contrastive loss."""
    from tqdm import tqdm

    from usesearch.models.factory import DEFAULT_PRESET
    from usesearch.training.config import TrainConfig
    from usesearch.training.data import load_samples
    from usesearch.training.run_folder import (
        check_new_run,
        drop_untrained,
        refuse_resume_without_state,
        resumed_preset,
        run_files_now,
    )
    from usesearch.training.train import Trainer
    from usesearch.training.trainer_state import trainer_file

    try:
        cfg = TrainConfig(
            preset=preset or DEFAULT_PRESET,
            epochs=epochs,
            batch_images=batch_images,
            lr=lr,
            weight_decay=weight_decay,
            crop=crop,
            max_steps=max_steps,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            seed=seed,
            device=device,
            precision=precision,
            skip_kinds=tuple(skip_kind or ()),
        )
    except BadArgumentError as exc:  # said by its flag: "weight_decay -1.0" named none a user typed
        raise exc.by_flag() from None
    if not resume:
        check_new_run(run_dir)  # before the datasets and models load
    elif trainer_file(run_dir) is None:
        refuse_resume_without_state(run_dir)  # before the datasets and models load
    else:
        # (its own preset where none is given; every setting it would change refused in one line)
        cfg = replace(cfg, preset=resumed_preset(run_dir, preset, cfg) or DEFAULT_PRESET)
    before = run_files_now(run_dir)  # (an earlier killed run's step-* heads: never removed by this one)
    folders: list[str | os.PathLike] = list(datasets)
    kinds_seen: set[str] = set()
    samples = load_samples(folders, cfg.skip_kinds, kinds_seen)
    for kind in sorted(set(cfg.skip_kinds) - kinds_seen):  # (a kind mistaken: it left nothing out, silently)
        typer.echo(f"--skip-kind {kind}: the data holds no text of that kind; it leaves nothing out", err=True)
    if not samples:
        left_out = f" (other than {', '.join(cfg.skip_kinds)} texts)" if cfg.skip_kinds else ""
        verb = "holds" if len(folders) == 1 else "hold"
        raise ValueError(
            f"{first_few([str(f) for f in folders])} {verb} no segment with a text{left_out} "
            "(`usesearch curate stats DIR` shows what a dataset holds)"
        )
    trainer = Trainer(samples, run_dir, cfg, say=lambda line: typer.echo(line, err=True))
    if resume:
        trainer.resume()
        if trainer.step >= trainer.total_steps:  # its report was said when it finished: "trained" would be untrue now
            opts.console.print(
                f"the run in {run_dir} had finished (step {trainer.step} of {trainer.total_steps}): nothing to train"
            )
            if as_json:
                print(json.dumps(_summary(trainer, run_dir, 0), indent=1))
            return
        opts.console.print(
            f"continuing the run in {run_dir} from its checkpoint of step {trainer.step} of {trainer.total_steps}"
        )
    first_step = trainer.step
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", disable=None)

    def progress(step, total, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    try:
        head = trainer.run(progress)
    except KeyboardInterrupt:
        bar.close()
        saved = trainer.saved_step if trainer_file(run_dir) is not None else None
        if saved is not None and saved < trainer.step:  # a second Ctrl-C: stopped at once, mid-way
            redone = f"step {trainer.step}" if saved + 1 == trainer.step else f"steps {saved + 1}-{trainer.step}"
            said = f"stopped at once; the newest checkpoint is step {saved} ({redone} run again)"
        else:
            said = "checkpoint written" if saved is not None else "no checkpoint was written yet"
        again = f": the same command with --resume continues (--run-dir {run_dir})" if saved is not None else ""
        opts.console.print(f"interrupted after step {trainer.step} of {trainer.total_steps}; {said}{again}")
        if as_json:  # a finished run's keys too: its head (the checkpoint's, where one learned) is usable as it is
            report = _summary(trainer, run_dir, trainer.step - first_step)
            report["head"] = report["head"] if saved is not None else None
            resumable = saved is not None
            print(
                json.dumps({**report, "interrupted": True, "resumable": resumable, "checkpoint_step": saved}, indent=1)
            )
        raise typer.Exit(130) from None
    except Exception as exc:
        if is_disk_full(exc):  # (it said only safetensors' "Error while serializing: I/O error")
            bar.close()
            again = "with --resume" if trainer_file(run_dir) is not None else "again (no checkpoint was written yet)"
            raise DiskFullError(
                f"disk full: cannot write the run in {run_dir} at step {trainer.step}; free space and run the same "
                f"command {again}"
            ) from None
        raise
    bar.close()
    trained_on = trainer.trained_on()
    if not trained_on and not resume:
        drop_untrained(run_dir, before)
    # (a resumed run's steps are this command's: it said "trained 28 steps" of a run resumed at 27)
    steps = f"{counted(trainer.step - first_step, 'more step')} (to step {trainer.step})" if first_step else None
    opts.console.print(
        f"trained {steps or counted(trainer.step, 'step')} on {counted(trained_on, 'image')}; "
        f"head: {head} (use it with --head {run_dir / 'head'})"
        if trained_on
        else f"{counted(trainer.step, 'step')} ran without a readable image"
        + (f" (stopped there, of {trainer.total_steps:,}: every photo is unreadable)" if trainer.ended_unread else "")
        + ": the head learned nothing"
        + ("" if resume else " (none kept: the same command starts again in this folder)")
    )
    if trainer.ended_unread and trained_on:
        opts.console.print(
            f"stopped at step {trainer.step} of {trainer.total_steps}: every photo became unreadable (a folder moved, "
            "a mount gone?); the head keeps what the steps before learned"
        )
    if trainer.steps_without_negatives and trained_on:
        opts.console.print(
            f"{trainer.steps_without_negatives:,} of {trainer.step:,} steps had fewer than two different texts in "
            "their batch: the contrastive loss has no negative there and learned nothing; more --batch-images helps"
        )
    if as_json:
        print(json.dumps(_summary(trainer, run_dir, trainer.step - first_step), indent=1))
    if trainer.unreadable:
        opts.console.print(
            f"skipped {len(trainer.unreadable)} photo(s) that could not be read: listed in {run_dir / 'unreadable.txt'}"
        )
    gone = [path for path in trainer.unreadable if not os.path.lexists(path)]
    if gone and (not trained_on or trainer.ended_unread):  # (the photos moved after curation: nothing said how on)
        opts.console.print(
            f"  {counted(len(gone), 'photo')} no longer where the dataset was curated (first: {gone[0]}): a curated "
            "dataset names its photos by path; move them back, or curate them again from where they are now"
        )
    opts.exit_if_all_failed(trained_on, 0, len(trainer.unreadable), "photo", "nothing was trained on")


def _summary(trainer, run_dir: Path, trained_now: int) -> dict:
    """``--json``'s report: the run's, whole (a resumed one's steps and photos since it
    began), and ``trained_now``, the steps this command trained (0: nothing to train)."""
    trained_on = trainer.trained_on()
    return {
        "steps": trainer.step,
        "trained_now": trained_now,
        "images": trained_on,  # the skipped are in "unreadable"
        "head": str(run_dir / "head") if trained_on else None,  # none that learned anything
        "steps_without_negatives": trainer.steps_without_negatives,
        "unreadable": trainer.unreadable,
    }
