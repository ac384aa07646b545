"""Train the USE head (paper §3.2, §4.2) on curated segment-text pairs.

Frozen CLIP and DINOv2; AdamW over the LLNs, block scales and projection; the
symmetric segment-text loss over all segments of a batch of images; polynomial
learning-rate decay. Every random draw (data order, augmentation, text sampling)
derives from (seed, epoch) or (seed, step), so ``resume`` continues exactly. A run's
settings, and which of them fix its schedule, are ``config.py``'s.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from usesearch.devices import bf16_autocast, resolve_device, uses_bf16
from usesearch.errors import UsesearchError, first_line
from usesearch.io.atomic import remove_orphan_temporaries
from usesearch.io.locks import one_writer
from usesearch.models.checkpoint import save_head
from usesearch.models.factory import create_use_and_clip
from usesearch.models.head import letterbox_weights
from usesearch.models.text import EXPRESSION_TEMPLATES, TextEncoder
from usesearch.models.text_keys import text_key

from .config import TrainConfig
from .data import Sample, augment, check_one_photo_batches, check_two_texts, data_identity, load_image
from .loss import segment_text_loss
from .run_folder import (
    LOCK_FILE,
    LOG_HEADER,
    check_new_run,
    is_run_file,
    refuse_resume_without_state,
    trim_log,
    writer_refusal,
)
from .stopping import StopRequest, stop_requests
from .trainer_state import NotTrainerState, read_trainer_state, resumable_settings, trainer_file, write_trainer_state

# Non-finite losses in a row that stop a run (one is skipped: a bad batch, not a bad run).
NON_FINITE_LIMIT = 3


class Trainer:
    def __init__(
        self, samples: list[Sample], out: str | os.PathLike, cfg: TrainConfig, say: Callable[[str], None] | None = None
    ):
        self.samples, self.out, self.cfg = samples, Path(out), cfg
        if any(s.left_out != cfg.skip_kinds for s in samples):  # (kinds are gone once loaded: checked, not applied)
            raise ValueError(
                f"the samples were not loaded leaving out {cfg.skip_kinds}: load_samples(dirs, cfg.skip_kinds)"
            )
        self.say = say or (lambda line: None)  # one line per photo skipped
        check_two_texts(samples)  # before any model loads
        check_one_photo_batches(samples, cfg.batch_images)
        self.device = resolve_device(cfg.device)
        uses_bf16(self.device, cfg.precision)  # an impossible precision refused before the models are built
        use, clip = create_use_and_clip(cfg.preset)
        self.use = use.to(self.device)
        self.text = TextEncoder(clip.model.to(self.device), clip.tokenizer, self.device)
        self.optimizer = torch.optim.AdamW(self.use.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = math.ceil(len(samples) / cfg.batch_images)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        # lr = base (1 - step/total)^0.9, stepped once per training step.
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(
            self.optimizer, total_iters=self.total_steps, power=cfg.poly_power
        )
        self.step = 0
        self.data = data_identity(samples)
        self.unreadable: dict[str, str] = {}  # photo -> why; skipped, said once, listed in unreadable.txt
        self.non_finite = 0  # losses that were not finite, in a row
        # Steps whose batch held fewer than two different texts: the loss has no negative
        # there (it is 0) and teaches nothing; said at the end of a run.
        self.steps_without_negatives = 0
        self.saved_step: int | None = None  # the step of the newest checkpoint (its trainer's state)
        self.ended_unread = False  # the run stopped before its schedule's end: no photo could be read
        self.photo_count = len({sample.path for sample in samples})
        self.read: set[str] = set()  # photos read whole at least once by this process

    def trained_on(self) -> int:
        """Photos the steps so far have drawn and read (``--max-steps`` may end before an
        epoch does); one read and failing later (its mount gone) counts."""
        return self.photos_reached() - len(set(self.unreadable) - self.read)

    def photos_reached(self) -> int:
        """Photos the steps so far have drawn (read, or skipped as unreadable): all of them
        after a whole epoch; before that, the first steps' batches of its order."""
        if self.step >= self.steps_per_epoch:
            return len(self.samples)
        return min(len(self.samples), self.step * self.cfg.batch_images)

    # -- one step ------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.samples))
        return order[within * self.cfg.batch_images : (within + 1) * self.cfg.batch_images].tolist()

    def prepare(self, step: int, position: int, index: int):
        """One photo of step ``step``'s batch, at ``position`` in it: read, augmented,
        preprocessed, one text drawn per segment. Its draws come from (seed, step,
        position) alone, so photos are prepared in any order, on any thread. None: a
        photo with no segment left in its crop; a str: why it cannot be read."""
        sample = self.samples[index]
        if sample.path in self.unreadable:
            return None
        try:
            rgb, masks = load_image(sample)
        except (OSError, ValueError, UsesearchError) as exc:  # the same photo fails every epoch: skip it
            return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.read.add(sample.path)  # (trained on, whatever fails later: a mount gone mid-run)
        rng = np.random.default_rng([self.cfg.seed, 10**6 + step, position])
        rgb, masks, keep = augment(rgb, masks, rng, self.cfg.crop, self.cfg.scale, self.cfg.resize_base)
        if len(keep) == 0:
            return None
        c, d = self.use.pixels(rgb, canvas=self.cfg.crop)  # mean-colour padding, as at inference
        weights = letterbox_weights(masks, self.use.preset.grid, canvas=self.cfg.crop)
        texts = [sample.texts[k][int(rng.integers(len(sample.texts[k])))] for k in keep]  # one text per segment
        return c, d, weights, texts

    def make_batch(self, step: int):
        """Step ``step``'s batch (None: no photo kept a segment); photos that cannot be
        read are skipped and recorded."""
        batch, unreadable = self.prepare_batch(step)
        for path, why in unreadable:
            self._skip(path, why)
        return batch

    def prepare_batch(self, step: int):
        """(batch, [(photo, why it cannot be read)]): no side effect, so the next batch
        is prepared on a thread while this one trains, and recorded on the main one."""
        indices = self.batch_indices(step)
        with ThreadPoolExecutor(max(1, self.cfg.loader_threads)) as pool:
            prepared = list(pool.map(self.prepare, [step] * len(indices), range(len(indices)), indices))
        clip_px, dino_px, weights, image_index, texts = [], [], [], [], []
        unreadable = []
        for index, photo in zip(indices, prepared):
            if isinstance(photo, str):
                unreadable.append((self.samples[index].path, photo))
            elif photo is not None:
                c, d, w, photo_texts = photo
                clip_px.append(c)
                dino_px.append(d)
                weights.append(w)
                image_index += [len(clip_px) - 1] * len(photo_texts)
                texts += photo_texts
        if not texts:
            return None, unreadable
        batch = torch.stack(clip_px), torch.stack(dino_px), torch.cat(weights), torch.tensor(image_index), texts
        return batch, unreadable

    def loss_on(self, batch) -> torch.Tensor:
        clip_px, dino_px, weights, image_index, texts = batch
        first: dict[str, str] = {}  # one text per key, the first seen, to embed
        for t in texts:
            first.setdefault(text_key(t), t)
        position = {key: i for i, key in enumerate(first)}
        text_ids = torch.tensor([position[text_key(t)] for t in texts], device=self.device)
        vectors = self.text.embed(list(first.values()), EXPRESSION_TEMPLATES)
        text_vectors = torch.from_numpy(vectors).to(self.device)[text_ids]
        # bfloat16 as at inference (float16 would need a gradient scaler); a CPU: float32 unless --precision bfloat16.
        with bf16_autocast(self.device, self.cfg.precision):
            tokens = self.use.backbone_tokens(clip_px.to(self.device), dino_px.to(self.device))
            segments = self.use(tokens, weights.to(self.device), image_index.to(self.device))
        return segment_text_loss(segments.float(), text_vectors, text_ids, self.cfg.logit_scale)

    # -- the loop ------------------------------------------------------------------
    def run(self, progress=None, until: int | None = None) -> Path:
        """Train to the end (or to step ``until``, e.g. to test resuming). Ctrl-C (or a
        SIGTERM) lets the step being trained finish, writes its checkpoint, and raises
        ``KeyboardInterrupt``: ``resume`` continues from that step, nothing lost."""
        with self._one_writer(), stop_requests() as stop:
            return self._run(progress, until, stop)

    def _one_writer(self):
        self.out.mkdir(parents=True, exist_ok=True)
        return one_writer(self.out / LOCK_FILE, writer_refusal(self.out))

    def _run(self, progress, until: int | None, stop: StopRequest | None = None) -> Path:
        # A kill -9 mid-checkpoint: a head or trainer file's worth.
        remove_orphan_temporaries(self.out, is_run_file)
        if self.step == 0:  # checked again under the lock: a run may have ended here since the command started
            check_new_run(self.out)
            # A run killed before its first checkpoint left its skips: this run finds its own.
            (self.out / "unreadable.txt").unlink(missing_ok=True)
        log_path = self.out / "log.csv"
        new_log = not log_path.exists() or self.step == 0
        with open(log_path, "w" if new_log else "a", newline="") as f:
            log = csv.writer(f)
            if new_log:
                log.writerow(LOG_HEADER)
                f.flush()  # on disk before the first step: a run killed in it is known as a run's folder
            self.use.train()
            end = until or self.total_steps
            ahead = ThreadPoolExecutor(1)  # the next batch is made while this one trains
            pending = ahead.submit(self.prepare_batch, self.step) if self.step < end else None
            try:
                while pending is not None:
                    start = time.perf_counter()
                    lr = self.optimizer.param_groups[0]["lr"]
                    batch, unreadable = pending.result()
                    pending = ahead.submit(self.prepare_batch, self.step + 1) if self.step + 1 < end else None
                    for path, why in unreadable:
                        self._skip(path, why)
                    loss = self.train_step(batch)
                    n = 0 if batch is None else len(batch[4])
                    log.writerow(
                        [
                            self.step,
                            (self.step - 1) // self.steps_per_epoch,
                            f"{loss.item() if loss is not None else float('nan'):.6f}",
                            f"{lr:.6g}",
                            n,
                            f"{time.perf_counter() - start:.3f}",
                        ]
                    )
                    f.flush()
                    if progress:
                        progress(self.step, self.total_steps, loss.item() if loss is not None else float("nan"))
                    due = self.step % self.cfg.checkpoint_every == 0 or self.step in (self.total_steps, until)
                    if due or (stop is not None and stop.is_set()):  # (a stop asked: this step's checkpoint)
                        self._checkpoint(stop, end)
                    if stop is not None and stop.is_set() and self.step < end:  # the last step ends the run
                        raise KeyboardInterrupt(f"interrupted after step {self.step}")
                    if len(self.unreadable) >= self.photo_count and pending is not None:
                        # Every photo is unreadable (a moved folder, a mount gone): the rest of the
                        # schedule would read nothing either, for hours; what was learned is kept.
                        self.ended_unread = True
                        if self.read:
                            self._checkpoint(stop, end)
                        break
            finally:  # the batch being prepared ends before the run (and its lock) does
                ahead.shutdown(wait=True, cancel_futures=True)
        self.use.eval()
        return self.out / "head.safetensors"

    def train_step(self, batch) -> torch.Tensor | None:
        """One optimizer step on ``batch`` (None: no photo of it kept a segment), and the
        schedule's step, which a step without a batch takes too."""
        loss = None
        if batch is None or len({text_key(t) for t in batch[4]}) < 2:
            self.steps_without_negatives += 1
        if batch is not None:
            loss = self.loss_on(batch)
            self._check_finite(loss)
            self.optimizer.zero_grad(set_to_none=True)
            if self.non_finite == 0:  # a non-finite loss is logged, its step not taken
                loss.backward()
                self.optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.step += 1
        return loss

    def _skip(self, path: str, why: str) -> None:
        if path in self.unreadable:  # met again in a batch prepared before it was recorded
            return
        self.unreadable[path] = why
        self.say(f"training skips {path}: {why}")
        with open(self.out / "unreadable.txt", "a", encoding="utf-8") as f:
            f.write(f"{path}\t{why}\n")

    def _check_finite(self, loss: torch.Tensor) -> None:
        self.non_finite = 0 if torch.isfinite(loss) else self.non_finite + 1
        if self.non_finite >= NON_FINITE_LIMIT:
            raise UsesearchError(
                f"the loss was not finite for {self.non_finite} steps running (to step {self.step + 1}): "
                f"the learning rate is likely too high; train anew with a lower --lr (now {self.cfg.lr}) "
                "in another --run-dir"
            )

    # -- checkpoints: safetensors + JSON, never pickles ----------------------------------
    def _checkpoint(self, stop: StopRequest | None, end: int) -> None:
        """``save``, a second Ctrl-C held until it ends (one cut between the trainer's state
        and the latest-head copy left ``head.*`` a checkpoint behind what was said)."""
        with stop.holding(last=self.step >= end) if stop is not None else contextlib.nullcontext():
            self.save()

    def save(self) -> None:
        """The step's head, then the trainer's state naming that step, then the latest-head
        copy: a kill anywhere leaves the trainer's state naming a step whose head is whole,
        and ``resume`` loads that head, so weights, optimizer and step always agree."""
        extra = {"step": self.step, "train_config": asdict(self.cfg), "data": self.data}
        weights = self.use.trainable_state_dict()
        self._drop_old_checkpoints(room_for_one=True)  # first: on a full disk, their room is the new one's
        save_head(self.out / f"step-{self.step:07d}", weights, self.use.preset, extra)
        counts = {"steps_without_negatives": self.steps_without_negatives}
        write_trainer_state(self.out, self.step, self.optimizer.state_dict(), self.scheduler.state_dict(), counts)
        self.saved_step = self.step
        save_head(self.out / "head", weights, self.use.preset, extra)
        self._drop_old_checkpoints()

    def _drop_old_checkpoints(self, room_for_one: bool = False) -> None:
        """Keep the newest ``keep_checkpoints`` step heads (all when None); the one
        trainer's state names is the newest, so a resume always finds its head.
        ``room_for_one``: before a save, one fewer, but never the head the trainer's state
        names until the new one is written (a resume on a full disk freed nothing)."""
        keep = self.cfg.keep_checkpoints
        if keep is None:
            return
        keep -= room_for_one
        steps = sorted({int(p.stem.split("-")[1]) for p in self.out.glob("step-*.json")})
        # Heads past this step are a killed run's leftovers (this run will write them
        # again): they go first, and this step's head, the one the trainer's state names, stays.
        stale = [step for step in steps if step > self.step]
        older = [step for step in steps if step <= self.step]
        for step in stale + older[: max(len(older) - keep, 0)]:
            if room_for_one and step == self.saved_step:
                continue
            for suffix in (".safetensors", ".json"):
                (self.out / f"step-{step:07d}{suffix}").unlink(missing_ok=True)

    def resume(self) -> None:
        """Continue the run in ``out`` where it stopped. Its schedule (steps, learning
        rate) was fixed when it started: settings that shape it must be the same. A
        folder with no checkpoint is refused (a mistyped --run-dir would start over)."""
        path = trainer_file(self.out)
        if path is None:
            refuse_resume_without_state(self.out)
        from usesearch.models.checkpoint import load_head

        # Damaged (cut short by a full disk, or not ours): a new run, in another folder,
        # since this one is refused to a new run while it holds the file.
        anew = f"train anew in another --run-dir (or move {self.out} away first)"
        try:
            trainer_state = read_trainer_state(path)
            step = trainer_state["step"]
        except OSError:  # unreadable, not damaged: said as such, the run still resumable
            raise
        except Exception as exc:  # noqa: BLE001 - one line
            what = first_line(exc) if isinstance(exc, NotTrainerState) else f"damaged ({first_line(exc)})"
            raise UsesearchError(f"--resume: {path} is {what}; {anew}") from None
        try:
            state, meta = load_head(self.out / f"step-{step:07d}", self.use.preset)
        except UsesearchError as exc:
            try:  # ``head.*`` is written after the trainer's state: the same step's weights, where it holds that step
                state, meta = load_head(self.out / "head", self.use.preset)
            except UsesearchError:
                meta = {}
            if meta.get("step") != step:
                raise UsesearchError(f"--resume: the head of step {step} is unusable ({exc}); {anew}") from None
            self.say(f"the head of step {step} is unusable ({exc}): resuming from head.safetensors, that step's too")
        self.cfg = resumable_settings(self.out, step, meta, self.cfg, self.data, self.say)
        self.use.load_state_dict(state, strict=False)
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        self.step = self.saved_step = trainer_state["step"]
        self.steps_without_negatives = trainer_state["counts"].get("steps_without_negatives", 0)
        with self._one_writer():  # not under a run still going
            trim_log(self.out, self.step)
        listed = self.out / "unreadable.txt"
        if listed.is_file():  # skipped by the run so far: skipped again (the same batches), untried
            for line in listed.read_text(encoding="utf-8").splitlines():
                photo, _, why = line.partition("\t")
                self.unreadable.setdefault(photo, why)
            self.say(f"{len(self.unreadable)} photo(s) in {listed} stay skipped, untried: the run goes on as it began")
