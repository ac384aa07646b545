"""Paper §3.2/§4.2 training: eq. (1), defaults, augmentation, exact resume, and learning."""

import csv
import math

import numpy as np
import pytest
import torch

import usesearch
from usesearch.training.config import TrainConfig
from usesearch.training.data import augment, load_samples
from usesearch.training.loss import LOGIT_SCALE, segment_text_loss
from usesearch.training.synthetic import class_texts, top1_accuracy, write_dataset
from usesearch.training.train import Trainer


def reference_loss(s, t, scale, same_text=None):
    """Eq. (1) written out term by term, with exp(scale * s_i . t_j)."""
    k = len(s)
    sim = [[scale * float(s[i] @ t[j]) for j in range(k)] for i in range(k)]
    total = 0.0
    for i in range(k):
        negatives = [j for j in range(k) if same_text is None or j == i or same_text[i] != same_text[j]]
        row = sum(math.exp(sim[i][j]) for j in negatives)
        col = sum(math.exp(sim[j][i]) for j in negatives)
        total += math.log(math.exp(sim[i][i]) / row) + math.log(math.exp(sim[i][i]) / col)
    return -total / (2 * k)


def test_loss_matches_equation_one():
    torch.manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    assert LOGIT_SCALE == 30.0
    assert segment_text_loss(s, t).item() == pytest.approx(reference_loss(s, t, 30.0), rel=1e-5)
    ids = torch.tensor([0, 1, 0, 2, 1, 3])  # segments 0 and 2 (and 1 and 4) drew the same text
    assert segment_text_loss(s, t, ids).item() == pytest.approx(reference_loss(s, t, 30.0, ids.tolist()), rel=1e-5)
    assert segment_text_loss(s, t, ids).item() < segment_text_loss(s, t).item()


def test_paper_defaults_and_polynomial_decay():
    from usesearch.models.factory import DEFAULT_PRESET

    cfg = TrainConfig()
    assert cfg.preset == DEFAULT_PRESET  # the Python API's as the CLI's (it was the random-weight tiny)
    assert (cfg.epochs, cfg.batch_images, cfg.lr, cfg.weight_decay, cfg.poly_power, cfg.crop, cfg.scale) == (
        5,
        32,
        1e-3,
        0.01,
        0.9,
        560,
        (0.5, 2.0),
    )
    # torch's PolynomialLR is the paper's poly schedule, lr = base (1 - step/total)^0.9.
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=100, power=0.9)
    for step in range(100):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - step / 100) ** 0.9, rel=1e-9, abs=1e-15)
        optimizer.step()
        schedule.step()


def test_augmentation_keeps_masks_on_their_pixels():
    rgb = np.zeros((100, 150, 3), np.uint8)
    masks = np.zeros((2, 100, 150), bool)
    masks[0, 20:60, 30:90] = True
    masks[1, 95:100, 145:150] = True  # a corner speck, often cropped away
    rgb[masks[0]] = (255, 0, 0)
    checked = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out_rgb, out_masks, keep = augment(rgb, masks, rng, crop=64)
        assert out_rgb.shape[:2] == out_masks.shape[1:] and max(out_rgb.shape[:2]) <= 64 and len(out_masks) == len(keep)
        assert all(m.any() for m in out_masks)  # cropped-away segments are dropped, not kept empty
        if 0 in keep:
            m = out_masks[list(keep).index(0)]
            inner = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
            assert (out_rgb[inner][:, 0] > 200).all()  # mask interior sits on red pixels
            red = (out_rgb[..., 0] > 250) & (out_rgb[..., 1] < 5)
            assert (m[red]).mean() > 0.95  # and red pixels are (almost all, edges aside) in the mask
            checked += 1
    assert checked >= 10  # the large segment survives most crops: its pixels were checked, not skipped


def test_training_crops_are_padded_like_inference_images():
    """A crop smaller than the crop size reaches the encoder padded with each
    backbone's mean colour, exactly as inference letterboxes a whole image."""
    from usesearch.models.factory import create_use
    from usesearch.models.head import letterbox_weights

    use = create_use("tiny")
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
    masks = np.zeros((1, 60, 80), bool)
    masks[0, 10:50, 20:70] = True
    out_rgb, out_masks, _ = augment(rgb, masks, np.random.default_rng(0), crop=80, scale=(1.0, 1.0))
    np.testing.assert_array_equal(out_rgb, rgb)  # the whole image: nothing to crop, nothing added
    for train, infer in zip(use.pixels(out_rgb, canvas=80), use.pixels(rgb)):
        torch.testing.assert_close(train, infer)
    torch.testing.assert_close(
        letterbox_weights(out_masks, use.preset.grid, canvas=80), letterbox_weights(masks, use.preset.grid)
    )
    small, _, _ = augment(rgb, masks, np.random.default_rng(0), crop=120, scale=(1.0, 1.0))
    clip_px = use.pixels(small, canvas=120)[0]
    assert float(clip_px[:, -1, -1].abs().max()) == 0.0  # padding is the mean colour: zero after normalisation


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return write_dataset(root / "train", 96, seed=1), write_dataset(root / "test", 24, seed=2)


def _losses(out):
    return [float(r["loss"]) for r in csv.DictReader(open(out / "log.csv"))]


def test_resume_reproduces_the_uninterrupted_run(synthetic, tmp_path):
    samples = load_samples([synthetic[0]])[:16]
    cfg = TrainConfig(preset="tiny", batch_images=4, crop=96, max_steps=4, checkpoint_every=100)
    Trainer(samples, tmp_path / "a", cfg).run()
    Trainer(samples, tmp_path / "b", cfg).run(until=2)
    resumed = Trainer(samples, tmp_path / "b", cfg)
    resumed.resume()
    assert resumed.step == 2
    resumed.run()
    assert _losses(tmp_path / "b") == pytest.approx(_losses(tmp_path / "a"), abs=1e-5)
    for out in ("a", "b"):  # the schedule, through a resume too: lr = base (1 - step/total)^0.9
        lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / out / "log.csv"))]
        assert lrs == pytest.approx([cfg.lr * (1 - step / 4) ** 0.9 for step in range(4)], rel=1e-5)
    a, b = usesearch.load_model(tmp_path / "a" / "head"), usesearch.load_model(tmp_path / "b" / "head")
    assert a.fingerprint == b.fingerprint


def test_training_beats_chance_and_the_untrained_head(trained_tiny_head):
    head, test_dir = trained_tiny_head  # 300 steps, 8 images a step, on 96 synthetic scenes
    chance = 1 / len(class_texts())
    untrained = top1_accuracy(usesearch.load_model("tiny"), test_dir)
    trained = top1_accuracy(usesearch.load_model(head), test_dir)
    assert trained > 3 * chance and trained > untrained + 0.15, (chance, untrained, trained)


def test_cli_train_writes_a_loadable_head_and_resumes(synthetic, tmp_path):
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    args = [
        "train",
        str(synthetic[1]),
        "--out",
        str(tmp_path / "run"),
        "--batch-images",
        "4",
        "--crop",
        "96",
        "--max-steps",
        "3",
        "--checkpoint-every",
        "2",
        "--preset",
        "tiny",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(_losses(tmp_path / "run")) == 3
    model = usesearch.load_model(tmp_path / "run" / "head")
    assert model.kind == "use" and model.fingerprint != usesearch.load_model("tiny").fingerprint
    again = CliRunner().invoke(app, args + ["--resume"])
    assert again.exit_code == 0 and "had finished (step 3 of 3): nothing to train" in again.output, again.output
    # A run folder holding a run is never overwritten, nor resumed on another schedule.
    anew = CliRunner().invoke(app, args)
    assert anew.exit_code == 2 and "holds a run already: --resume continues it" in anew.output
    longer = [*args[:-4], "--max-steps", "5", *args[-2:], "--resume"]
    changed = CliRunner().invoke(app, longer)
    assert changed.exit_code == 2 and "--max-steps 3 (now 5)" in changed.output, changed.output
    unset = CliRunner().invoke(app, [*args[:8], *args[10:], "--resume"])  # no --max-steps: it said "None"
    assert unset.exit_code == 2 and "--max-steps 3 (now not given)" in unset.output, unset.output
    assert len(_losses(tmp_path / "run")) == 3  # nothing written by either
    assert CliRunner().invoke(app, [*args[:-4], "--max-steps", "0", *args[-2:]]).exit_code == 2
    mistyped = [*args[:3], str(tmp_path / "rnu"), *args[4:], "--resume"]
    refused = CliRunner().invoke(app, mistyped)
    assert refused.exit_code == 2 and "holds no checkpoint to continue" in refused.output, refused.output
    # Its trainer's state deleted, resumed without --preset (a tiny run): the missing state
    # is said, not the default preset's missing weights, and the heads are said usable.
    (tmp_path / "run" / "trainer.safetensors").unlink()
    without_preset = [a for a in args if a not in ("--preset", "tiny")]
    stateless = CliRunner().invoke(app, [*without_preset, "--resume"], env={"HF_HUB_OFFLINE": "1"})
    said = " ".join(stateless.output.split())
    assert stateless.exit_code == 2 and "holds a run's heads (head.json" in said, said
    assert "but no trainer.safetensors" in said and "weights" not in said, said


def test_a_head_and_a_trainers_state_given_for_each_other_are_named_as_such(synthetic, tmp_path):
    """A head copied over the trainer's state was "damaged ('trainer')" (a KeyError's
    words); `--head RUN/trainer` said only that RUN/trainer.json is missing."""
    import shutil

    from typer.testing import CliRunner

    from usesearch.cli.app import app

    run = tmp_path / "run"
    args = ["train", str(synthetic[1]), "--run-dir", str(run), "--batch-images", "4", "--crop", "96"]
    args += ["--max-steps", "3", "--checkpoint-every", "2", "--preset", "tiny"]
    assert CliRunner().invoke(app, args).exit_code == 0
    shutil.copy(run / "head.safetensors", run / "trainer.safetensors")
    resumed = CliRunner().invoke(app, [*args, "--resume"])  # (its settings as it began: only the file is wrong)
    said = " ".join(resumed.output.split())
    assert resumed.exit_code == 2 and "trainer.safetensors is not a training run's state" in said, said
    assert "damaged" not in said and "'trainer'" not in said, said
    with pytest.raises(usesearch.UsesearchError, match=f"optimizer state: its head is {run / 'head'}"):
        usesearch.load_model("tiny", head=run / "trainer")


def test_cli_train_interrupted_says_how_to_continue(synthetic, tmp_path, monkeypatch):
    import json
    import os
    import signal

    from typer.testing import CliRunner

    from usesearch.cli.app import app

    def ctrl_c_at_step_2(self, progress=None, until=None):
        return real_run(self, lambda step, *a: step == 2 and os.kill(os.getpid(), signal.SIGINT), until)

    from usesearch.training.train import Trainer

    real_run = Trainer.run
    monkeypatch.setattr(Trainer, "run", ctrl_c_at_step_2)
    args = ["train", str(synthetic[1]), "--run-dir", str(tmp_path / "run"), "--batch-images", "4", "--crop", "96"]
    result = CliRunner().invoke(
        app, [*args, "--max-steps", "5", "--checkpoint-every", "10", "--preset", "tiny", "--json"]
    )
    assert result.exit_code == 130, result.output
    assert "interrupted after step 2 of 5; checkpoint written" in result.stderr
    summary = {"steps": 2, "trained_now": 2, "interrupted": True, "resumable": True, "checkpoint_step": 2}
    said = json.loads(result.stdout)  # with a finished run's keys: its head is usable as it is
    images, head = said.pop("images"), said.pop("head")
    assert said.pop("unreadable") == {} and said.pop("steps_without_negatives") >= 0
    assert said == summary and images > 0 and head == str(tmp_path / "run" / "head")
    assert usesearch.load_model(head).kind == "use"


def test_cli_train_stopped_at_once_names_the_checkpoint_a_resume_starts_from(synthetic, tmp_path, monkeypatch):
    """A second Ctrl-C stops at once, mid-way between checkpoints: the line said "checkpoint
    written" at step 3 where the newest was step 2's."""
    import json
    import os
    import signal

    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.training.train import Trainer

    def twice_at_step_3(step, *a):
        for _ in range(2 if step == 3 else 0):
            os.kill(os.getpid(), signal.SIGINT)

    real_run = Trainer.run
    monkeypatch.setattr(Trainer, "run", lambda self, progress=None, until=None: real_run(self, twice_at_step_3, until))
    args = ["train", str(synthetic[1]), "--run-dir", str(tmp_path / "run"), "--batch-images", "4", "--crop", "96"]
    result = CliRunner().invoke(
        app, [*args, "--max-steps", "5", "--checkpoint-every", "2", "--preset", "tiny", "--json"]
    )
    assert result.exit_code == 130, result.output
    said = "interrupted after step 3 of 5; stopped at once; the newest checkpoint is step 2 (step 3 run again)"
    assert said in result.stderr, result.stderr
    assert json.loads(result.stdout)["checkpoint_step"] == 2
    monkeypatch.setattr(Trainer, "run", real_run)
    again = CliRunner().invoke(
        app, [*args, "--max-steps", "5", "--checkpoint-every", "2", "--preset", "tiny", "--resume"]
    )
    assert again.exit_code == 0 and "from its checkpoint of step 2 of 5" in again.output, again.output


def test_a_second_ctrl_c_while_a_checkpoint_is_written_waits_for_its_latest_head(
    synthetic, tmp_path, monkeypatch, capfd
):
    """A second Ctrl-C between the trainer's state and the latest-head copy: the run said
    "checkpoint written" at step 2 while `head.*` was still an older step's (or none)."""
    import json
    import os
    import signal

    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.training import train as training
    from usesearch.training.train import Trainer

    real_state, real_run = training.write_trainer_state, Trainer.run

    def state_then_ctrl_c(*args, **kwargs):
        real_state(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the second: the first came at the end of step 2

    monkeypatch.setattr(training, "write_trainer_state", state_then_ctrl_c)
    ctrl_c_at_2 = lambda step, *a: step == 2 and os.kill(os.getpid(), signal.SIGINT)  # noqa: E731
    monkeypatch.setattr(Trainer, "run", lambda self, progress=None, until=None: real_run(self, ctrl_c_at_2, until))
    run = tmp_path / "run"
    args = ["train", str(synthetic[1]), "--run-dir", str(run), "--batch-images", "4", "--crop", "96"]
    result = CliRunner().invoke(app, [*args, "--max-steps", "5", "--checkpoint-every", "10", "--preset", "tiny"])
    assert result.exit_code == 130, result.output
    assert "interrupted after step 2 of 5; checkpoint written" in result.output, result.output
    assert "stopping once this checkpoint is written" in capfd.readouterr().err  # (the handler writes to fd 2)
    assert json.loads((run / "head.json").read_text())["step"] == 2  # what was said is on disk


@pytest.mark.parametrize("case", ["a third abandons the write", "through the last step's write"])
def test_a_ctrl_c_kept_through_a_checkpoint_neither_traps_the_run_nor_ends_a_finished_one(
    synthetic, tmp_path, monkeypatch, case
):
    """A write stuck on a mount kept every further Ctrl-C waiting: a third abandons it. A
    second one through the run's last checkpoint made the finished run "interrupted"."""
    import json
    import os
    import signal

    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.training import train as training
    from usesearch.training.train import Trainer

    real_state, real_run = training.write_trainer_state, Trainer.run
    third = case == "a third abandons the write"

    def ctrl_c_while_writing(*args, **kwargs):
        for _ in range(2 if third else 1):
            os.kill(os.getpid(), signal.SIGINT)
        real_state(*args, **kwargs)

    monkeypatch.setattr(training, "write_trainer_state", ctrl_c_while_writing)
    at = 2 if third else 3
    ctrl_c = lambda step, *a: step == at and os.kill(os.getpid(), signal.SIGINT)  # noqa: E731
    monkeypatch.setattr(Trainer, "run", lambda self, progress=None, until=None: real_run(self, ctrl_c, until))
    run = tmp_path / "run"
    args = ["train", str(synthetic[1]), "--run-dir", str(run), "--batch-images", "4", "--crop", "96"]
    result = CliRunner().invoke(app, [*args, "--max-steps", "3", "--checkpoint-every", "10", "--preset", "tiny"])
    if third:
        assert result.exit_code == 130 and "no checkpoint was written yet" in result.output, result.output
        assert not (run / "trainer.safetensors").exists()
    else:
        assert result.exit_code == 0 and "trained 3 steps" in result.output, result.output
        assert json.loads((run / "head.json").read_text())["step"] == 3


def test_the_trainer_builds_the_papers_optimizer_and_schedule(synthetic, tmp_path):
    """Paper §4.2 on the Trainer itself (the config test checks only the numbers):
    AdamW at 1e-3 with weight decay 0.01 over the head's parameters alone, and the
    polynomial decay of power 0.9 over the run's steps."""
    from usesearch.training.data import load_samples

    samples = load_samples([synthetic[1]])
    trainer = Trainer(samples, tmp_path, TrainConfig(preset="tiny", batch_images=4, crop=96))
    [group] = trainer.optimizer.param_groups
    assert type(trainer.optimizer) is torch.optim.AdamW and (group["lr"], group["weight_decay"]) == (1e-3, 0.01)
    assert {id(p) for p in group["params"]} == {id(p) for p in trainer.use.trainable_parameters()}
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.PolynomialLR)
    assert (trainer.scheduler.power, trainer.scheduler.total_iters) == (0.9, trainer.total_steps)
    assert trainer.total_steps == 5 * -(-len(samples) // 4)  # 5 epochs by default


def test_the_random_resize_spans_half_to_twice_the_photo_as_inference_shows_it():
    """§4.2's factor from 0.5 to 2, of the photo as inference shows it (its longest side
    at the crop): with a crop larger than any resized photo, the crop is the resized
    photo, so its size shows the factor drawn. Drawn on the photo's own pixels, a photo
    a third of the crop trained at a third of the canvas and was embedded filling it."""
    rgb = np.zeros((100, 50, 3), np.uint8)
    masks = np.ones((1, 100, 50), bool)
    for crop in (100, 300):  # a photo the crop's size, and one a third of it
        drawn = [augment(rgb, masks, np.random.default_rng(seed), crop=crop)[0].shape[:2] for seed in range(200)]
        heights = [h for h, _ in drawn]
        assert 0.5 * crop <= min(heights) < 0.6 * crop and max(heights) == crop  # up to twice: cropped to the crop
        widths = [w for h, w in drawn if h < crop]  # not cropped: the photo's shape kept
        assert widths and all(abs(w - h / 2) <= 1 for h, w in drawn if h < crop)
    fills, _, _ = augment(rgb, masks, np.random.default_rng(0), crop=300, scale=(1.0, 1.0))
    assert fills.shape[:2] == (300, 150)  # at 1, the canvas's longest side, as inference fills the input


def test_each_step_draws_one_of_a_segments_texts_anew(synthetic, tmp_path):
    """§4.2: one text per segment, drawn at random each step from all its texts."""
    from dataclasses import replace

    from usesearch.training.data import load_samples

    sample = load_samples([synthetic[1]])[0]
    several = replace(sample, texts=[["one", "two", "three"] for _ in sample.texts])
    trainer = Trainer([several], tmp_path, TrainConfig(preset="tiny", batch_images=1, crop=96))
    drawn = []
    for step in range(40):
        prepared = trainer.prepare(step, 0, 0)
        if prepared is not None:  # None: every segment cropped away this step
            _, _, weights, texts = prepared
            assert len(texts) == len(weights) and set(texts) <= {"one", "two", "three"}
            drawn.append(texts[0])
    assert len(drawn) > 10 and set(drawn) == {"one", "two", "three"}


def test_the_loss_embeds_each_text_with_the_papers_four_templates(synthetic, tmp_path, monkeypatch):
    """§4.2: a segment's text enters the loss as the mean embedding of the four
    expression templates, as queries are embedded; each distinct text once."""
    from usesearch.models.text import EXPRESSION_TEMPLATES

    trainer = Trainer(load_samples([synthetic[1]]), tmp_path, TrainConfig(preset="tiny", batch_images=1, crop=96))
    real, asked = trainer.text.embed, []

    def embed(texts, templates):
        asked.append((list(texts), tuple(templates)))
        return real(texts, templates)

    monkeypatch.setattr(trainer.text, "embed", embed)
    batch = next(b for step in range(20) if (b := trainer.prepare_batch(step)[0]) is not None)
    assert torch.isfinite(trainer.loss_on(batch))
    ((texts, templates),) = asked
    assert templates == EXPRESSION_TEMPLATES and len(templates) == 4
    assert sorted(texts) == sorted(set(batch[-1]))


@pytest.mark.parametrize(
    "setting, why",
    [
        ({"lr": math.nan}, "lr nan: give a finite number above 0"),
        ({"lr": math.inf}, "lr inf"),
        ({"lr": 0.0}, "lr 0.0"),
        ({"weight_decay": math.nan}, "weight_decay nan"),
        ({"weight_decay": -0.1}, "weight_decay -0.1"),
        ({"seed": -1}, "seed -1: give a whole number from 0 to 2"),
        ({"seed": 2**63}, f"seed {2**63}"),
        ({"crop": 100_000}, "crop 100000: give a side from 16 to 2048 pixels"),  # photos drawn at up to twice it
        ({"crop": 8}, "crop 8: give a side from 16 to 2048 pixels"),  # (typer's own box said the low end)
    ],
)
def test_a_rate_that_cannot_train_is_refused_before_a_model_loads(setting, why, synthetic, tmp_path, monkeypatch):
    """A nan learning rate would train nothing and say so only as non-finite losses later."""
    with pytest.raises(ValueError, match=why):
        TrainConfig(**setting)
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    monkeypatch.setattr("usesearch.training.train.create_use_and_clip", lambda *a: pytest.fail("a model loaded"))
    flag, value = next(iter(setting.items()))
    args = ["train", str(synthetic[1]), "--run-dir", str(tmp_path / "run"), "--preset", "tiny"]
    result = CliRunner().invoke(app, [*args, f"--{flag.replace('_', '-')}", str(value)])
    said = why.replace(flag, f"--{flag.replace('_', '-')}", 1)  # by its flag: "weight_decay -0.1" named none
    assert result.exit_code == 2 and said in result.output, result.output
    assert not (tmp_path / "run").exists()  # refused before the run's folder is made
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run" / "log.csv").exists()
    assert TrainConfig().lr == 1e-3 and TrainConfig(weight_decay=0.0).weight_decay == 0.0
