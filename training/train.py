"""Train the USE head (paper §3.2, §4.2) on curated segment-text pairs.

Frozen CLIP and DINOv2; AdamW over the LLNs, block scales and projection; the
symmetric segment-text loss over all segments of a batch of images; polynomial
learning-rate decay. Every random draw (data order, augmentation, text sampling)
derives from (seed, epoch) or (seed, step), so ``resume`` continues exactly.
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from usesearch.devices import resolve_device
from usesearch.errors import UsesearchError
from usesearch.io.atomic import write_atomic
from usesearch.models.checkpoint import save_head
from usesearch.models.factory import create_use_and_clip
from usesearch.models.head import letterbox_weights
from usesearch.models.text import EXPRESSION_TEMPLATES, TextEncoder

from .data import Sample, augment, load_image
from .loss import LOGIT_SCALE, segment_text_loss


@dataclass
class TrainConfig:
    preset: str = "tiny"
    epochs: int = 5  # paper §4.2
    batch_images: int = 32  # paper §4.2
    lr: float = 1e-3  # paper §4.2
    weight_decay: float = 0.01  # paper §4.2
    poly_power: float = 0.9  # paper §4.2
    crop: int = 560  # paper §4.2
    scale: tuple[float, float] = (0.5, 2.0)  # paper §4.2
    logit_scale: float = LOGIT_SCALE
    checkpoint_every: int = 500
    max_steps: int | None = None
    seed: int = 0
    device: str | None = None
    extra: dict = field(default_factory=dict)


# The settings that fix a run's schedule: a resumed run keeps them.
SCHEDULE = ("epochs", "batch_images", "lr", "weight_decay", "max_steps", "seed", "crop")


def check_new_run(out: str | os.PathLike) -> None:
    """A run folder that holds a run is continued with ``--resume``, never overwritten."""
    if (Path(out) / "trainer.pt").is_file():
        raise UsesearchError(f"{out} holds a run already: --resume continues it, or give another --run-dir")


class Trainer:
    def __init__(self, samples: list[Sample], out: str | os.PathLike, cfg: TrainConfig):
        self.samples, self.out, self.cfg = samples, Path(out), cfg
        self.device = resolve_device(cfg.device)
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
        self.amp = self.device.type == "cuda"

    # -- one step ------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.samples))
        return order[within * self.cfg.batch_images : (within + 1) * self.cfg.batch_images].tolist()

    def make_batch(self, step: int):
        rng = np.random.default_rng([self.cfg.seed, 10**6 + step])
        clip_px, dino_px, weights, image_index, texts = [], [], [], [], []
        for i in self.batch_indices(step):
            sample = self.samples[i]
            rgb, masks = load_image(sample)
            rgb, masks, keep = augment(rgb, masks, rng, self.cfg.crop, self.cfg.scale)
            if len(keep) == 0:
                continue
            c, d = self.use.pixels(rgb, canvas=self.cfg.crop)  # mean-colour padding, as at inference
            clip_px.append(c)
            dino_px.append(d)
            weights.append(letterbox_weights(masks, self.use.preset.grid, canvas=self.cfg.crop))
            image_index += [len(clip_px) - 1] * len(keep)
            texts += [sample.texts[k][int(rng.integers(len(sample.texts[k])))] for k in keep]  # one text per segment
        if not texts:
            return None
        return torch.stack(clip_px), torch.stack(dino_px), torch.cat(weights), torch.tensor(image_index), texts

    def loss_on(self, batch) -> torch.Tensor:
        clip_px, dino_px, weights, image_index, texts = batch
        position = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        unique = list(position)
        text_ids = torch.tensor([position[t] for t in texts], device=self.device)
        text_vectors = torch.from_numpy(self.text.embed(unique, EXPRESSION_TEMPLATES)).to(self.device)[text_ids]
        with torch.autocast(self.device.type, enabled=self.amp):
            tokens = self.use.backbone_tokens(clip_px.to(self.device), dino_px.to(self.device))
            segments = self.use(tokens, weights.to(self.device), image_index.to(self.device))
        return segment_text_loss(segments.float(), text_vectors, text_ids, self.cfg.logit_scale)

    # -- the loop ------------------------------------------------------------------
    def run(self, progress=None, until: int | None = None) -> Path:
        """Train to the end (or to step ``until``, e.g. to test resuming)."""
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "log.csv"
        new_log = not log_path.exists() or self.step == 0
        with open(log_path, "w" if new_log else "a", newline="") as f:
            log = csv.writer(f)
            if new_log:
                log.writerow(["step", "epoch", "loss", "lr", "segments", "seconds"])
            self.use.train()
            while self.step < (until or self.total_steps):
                start = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                batch = self.make_batch(self.step)
                loss = None
                if batch is not None:
                    loss = self.loss_on(batch)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                with warnings.catch_warnings():  # a step without a batch still advances the schedule
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()
                self.step += 1
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
                if self.step % self.cfg.checkpoint_every == 0 or self.step in (self.total_steps, until):
                    self.save()
        self.use.eval()
        return self.out / "head.safetensors"

    # -- checkpoints: safetensors + JSON, never pickles ----------------------------------
    def save(self) -> None:
        extra = {"step": self.step, "train_config": asdict(self.cfg)}
        save_head(self.out / "head", self.use.trainable_state_dict(), self.use.preset, extra)
        save_head(self.out / f"step-{self.step:07d}", self.use.trainable_state_dict(), self.use.preset, extra)
        # Optimizer and schedule through their own state_dicts, read back with weights_only=True.
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        write_atomic(self.out / "trainer.pt", lambda path: torch.save(state, path))

    def resume(self) -> None:
        """Continue the run in ``out`` where it stopped. Its schedule (steps, learning
        rate) was fixed when it started: settings that shape it must be the same."""
        path = self.out / "trainer.pt"
        if not path.is_file():
            return
        from usesearch.models.checkpoint import load_head

        state, meta = load_head(self.out / "head", self.use.preset)
        started = meta.get("train_config") or {}
        changed = [
            f"--{name.replace('_', '-')} {started[name]} (now {getattr(self.cfg, name)})"
            for name in SCHEDULE
            if name in started and started[name] != getattr(self.cfg, name)
        ]
        if changed:
            raise UsesearchError(
                f"--resume continues the run in {self.out} as it was started: {', '.join(changed)}; "
                "give those again, or start a new run in another --run-dir"
            )
        self.use.load_state_dict(state, strict=False)
        meta = torch.load(path, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(meta["optimizer"])
        self.scheduler.load_state_dict(meta["scheduler"])
        self.step = meta["step"]
