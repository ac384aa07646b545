"""Training survives what a long run meets: an unreadable or replaced photo, masks that
do not fit it, a non-finite loss; batches whatever the loader threads, bf16 autocast as on
a GPU, the train command's report (kills, resumes, checkpoints: test_training_resume.py)."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import usesearch
from tests.helpers import one_annotation_coco
from usesearch.models.text_keys import text_key
from usesearch.training.config import TrainConfig
from usesearch.training.synthetic import write_dataset
from usesearch.training.train import Trainer

CFG = TrainConfig(preset="tiny", batch_images=4, crop=96, max_steps=6, checkpoint_every=2)


def _log_steps(out):
    return [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))]


def test_a_photo_replaced_since_curation_is_skipped_even_at_its_size(samples, tmp_path):
    from dataclasses import replace

    from PIL import Image

    from usesearch.training.data import load_image

    rgb, _ = load_image(samples[0])
    other = tmp_path / "same-size.png"
    Image.new("RGB", (rgb.shape[1], rgb.shape[0])).save(other)  # black, the curated photo's size
    with pytest.raises(usesearch.UsesearchError, match="changed since it was curated"):
        load_image(replace(samples[0], path=str(other)))


def test_an_unreadable_photo_is_skipped_and_listed(samples, tmp_path):
    from dataclasses import replace

    gone = replace(samples[0], path=str(tmp_path / "gone.png"))
    from usesearch.masks import rle

    misfit = replace(samples[1], rles=[rle.encode(np.zeros((7, 5), bool))])
    broken = [gone, misfit, *samples[2:]]
    said = []
    trainer = Trainer(broken, tmp_path / "run", replace(CFG, max_steps=4, batch_images=8), say=said.append)
    trainer.run()
    assert trainer.step == 4 and set(trainer.unreadable) == {gone.path, misfit.path}
    assert "masks are 5x7 but the photo is" in trainer.unreadable[misfit.path]
    assert (tmp_path / "run" / "unreadable.txt").read_text().splitlines()[0].startswith(f"{gone.path}\t")
    assert len(said) == len(trainer.unreadable)  # said once per photo, not once per epoch


def test_photos_gone_mid_run_stop_it_and_keep_what_was_learned(tmp_path):
    """A mount gone after an epoch: every photo read before fails now. The run stops (the
    rest of the schedule would read nothing), and what it learned is no untrained run's:
    its head is saved and counted, not dropped with its checkpoints."""
    import shutil

    from usesearch.training.data import load_samples

    data = write_dataset(tmp_path / "data", 4, seed=6)
    photos = load_samples([data])
    trainer = Trainer(photos, tmp_path / "run", replace(CFG, max_steps=8, batch_images=2, checkpoint_every=100))

    def progress(step, total, loss):
        if step == 2:  # an epoch done: every photo read once
            shutil.rmtree(data / "images")

    trainer.run(progress)
    # (stopped once each photo has failed: a step or two past the deletion, as each epoch orders them)
    stopped = trainer.step
    assert trainer.ended_unread and 3 < stopped < 8 and _log_steps(tmp_path / "run") == list(range(1, stopped + 1))
    assert trainer.trained_on() == 4 and trainer.saved_step == stopped
    assert (tmp_path / "run" / "head.safetensors").exists()


def test_masks_that_do_not_fit_their_photo_are_refused(samples):
    from dataclasses import replace

    from usesearch.masks import rle
    from usesearch.training.data import load_image

    rgb, _ = load_image(samples[0])
    rotated = rle.encode(np.zeros((rgb.shape[1], rgb.shape[0] + 1), bool))  # EXIF-rotated shape
    with pytest.raises(usesearch.UsesearchError, match="masks are .* but the photo is"):
        load_image(replace(samples[0], rles=[rotated]))


def test_a_non_finite_loss_takes_no_step_and_three_in_a_row_stop_the_run(samples, tmp_path, monkeypatch):
    trainer = Trainer(samples, tmp_path, CFG)
    before = {k: v.clone() for k, v in trainer.use.trainable_state_dict().items()}
    monkeypatch.setattr(trainer, "loss_on", lambda batch: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(usesearch.UsesearchError, match="not finite for 3 steps running") as stopped:
        trainer.run()
    assert "train anew with a lower --lr (now 0.001) in another --run-dir" in str(stopped.value)  # not --resume
    after = trainer.use.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_texts_clip_cannot_tell_apart_are_one_text_in_the_loss():
    """Same-text masking keys on what the tokenizer sees: case and spacing fold."""
    from usesearch.models.factory import create_use_and_clip

    tokenizer = create_use_and_clip("tiny")[1].tokenizer
    a, b = "A red  apple", "a red apple"
    assert torch.equal(tokenizer([a]), tokenizer([b])) and text_key(a) == text_key(b)
    assert text_key("a red apple") != text_key("a green apple")


def test_batches_are_the_same_whatever_the_loader_threads(samples, tmp_path):
    """Photos are prepared on several threads, in any order: each one's draws depend on
    (seed, step, position) only, so the batch is the one a single thread makes."""
    from dataclasses import replace

    one, four = (Trainer(samples, tmp_path / str(n), replace(CFG, loader_threads=n)) for n in (1, 4))
    for step in (0, 5):
        a, b = one.make_batch(step), four.make_batch(step)
        assert a[4] == b[4] and torch.equal(a[3], b[3])
        assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3]))


def test_steps_whose_batch_has_no_negative_are_counted(samples, tmp_path):
    """One image a batch with one text: the loss is 0 and nothing is learned; counted,
    so the run can say so."""
    from dataclasses import replace

    # Three photos of one segment and one of several (batches of one photo, one epoch: each once).
    single = [replace(s, rles=s.rles[:1], texts=s.texts[:1]) for s in samples[:3]] + [samples[3]]
    trainer = Trainer(single, tmp_path, replace(CFG, batch_images=1, max_steps=4))
    trainer.run()
    assert trainer.steps_without_negatives == 3
    rich = Trainer(samples, tmp_path / "rich", replace(CFG, max_steps=2))
    rich.run()
    assert rich.steps_without_negatives == 0


def test_threads_and_the_prefetched_batch_train_as_one_thread_does(samples, tmp_path):
    from dataclasses import replace

    for n in (1, 4):
        Trainer(samples, tmp_path / str(n), replace(CFG, loader_threads=n, max_steps=4)).run()
    assert _losses(tmp_path / "1") == pytest.approx(_losses(tmp_path / "4"), abs=1e-6)


def _losses(out):
    return [float(r["loss"]) for r in csv.DictReader(open(out / "log.csv"))]


def test_train_and_curate_json_are_their_reports_alone_on_stdout(tmp_path):
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    data = write_dataset(tmp_path / "data", 4, seed=5)
    args = ["train", str(data), "--run-dir", str(tmp_path / "run"), "--preset", "tiny", "--crop", "96"]
    trained = CliRunner().invoke(app, [*args, "--max-steps", "1", "--batch-images", "2", "--json"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["steps"] == summary["trained_now"] == 1 and summary["images"] == 2 and summary["unreadable"] == {}
    one_annotation_coco(tmp_path / "c.json", "5-00000.png", (128, 128), "shape", (2, 40))
    curated = CliRunner().invoke(
        app,
        [
            "curate",
            "run",
            str(tmp_path / "c.json"),
            *"--input-format coco-instances --images".split(),
            str(data / "images"),
        ]
        + ["--dataset-dir", str(tmp_path / "ds"), "--json"],
    )
    assert curated.exit_code == 0, curated.output
    report = json.loads(curated.stdout)
    assert report["done"] == 1 and report["pairs"] == 1 and report["failures"] == []


def test_training_runs_under_bf16_autocast_as_it_does_on_a_gpu(samples, tmp_path, monkeypatch):
    """On a GPU the backbones and the loss run under bfloat16 autocast: the head's
    pooling wrote a bf16 product into a float32 result and the first step failed.
    ``--precision bfloat16`` on the CPU (its bf16 instructions said present, so on any
    CI machine) runs the same autocast; the head is seen to be called under it."""
    import usesearch.devices

    monkeypatch.setattr(usesearch.devices, "cpu_has_bf16", lambda: True)
    trainer = Trainer(samples, tmp_path, replace(CFG, precision="bfloat16", device="cpu"))
    seen: list[bool] = []
    trainer.use.head.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    trainer.run(until=2)
    assert seen and all(seen), seen
    head = trainer.use.head.proj.weight
    assert head.dtype == torch.float32 and torch.isfinite(head).all() and _log_steps(tmp_path) == [1, 2]


def test_training_on_photos_that_are_all_gone_exits_3_and_offers_no_head(tmp_path):
    """A script must not read a run that trained on nothing as success."""
    import shutil

    from typer.testing import CliRunner

    from usesearch.cli.app import app

    data = write_dataset(tmp_path / "data", 4, seed=6)
    shutil.rmtree(data / "images")
    args = ["train", str(data), "--run-dir", str(tmp_path / "run"), "--preset", "tiny", "--crop", "96"]
    result = CliRunner().invoke(app, [*args, "--max-steps", "6", "--batch-images", "2", "--json"])
    assert result.exit_code == 3, result.output
    assert "every photo failed (4); nothing was trained on" in result.stderr
    # One epoch (2 steps) has tried every photo: the schedule's other 4 steps would read none.
    assert "use it with --head" not in result.output and (
        "2 steps ran without a readable image (stopped there, of 6: every photo is unreadable): the head learned"
        in result.output
    )
    assert "--batch-images helps" not in result.output  # no batch had photos: not a batch-size problem
    said = " ".join(result.output.split())  # what to do about photos moved since curation
    assert "4 photos no longer where the dataset was curated (first: " in said and "move them back, or" in said, said
    summary = json.loads(result.stdout)
    assert summary["images"] == 0 and summary["head"] is None and len(summary["unreadable"]) == 4
    assert _log_steps(tmp_path / "run") == [1, 2]
    # Nor a head on disk that looks usable, and the same command may run there again (it
    # left head.safetensors and step-*, and the folder "holds a run already").
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")) == [
        "log.csv",
        "unreadable.txt",
    ]
    again = CliRunner().invoke(app, [*args, "--max-steps", "2", "--batch-images", "2"])
    assert again.exit_code == 3 and "holds a run already" not in again.output, again.output
    # A head an earlier run killed before its trainer state left is not this run's to remove.
    (tmp_path / "run" / "step-9.safetensors").write_bytes(b"an earlier run's")
    CliRunner().invoke(app, [*args, "--max-steps", "2", "--batch-images", "2"])
    assert (tmp_path / "run" / "step-9.safetensors").read_bytes() == b"an earlier run's"
    assert not (tmp_path / "run" / "head.safetensors").exists()


def test_a_run_cut_short_by_max_steps_counts_the_photos_it_reached(tmp_path):
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    data = write_dataset(tmp_path / "data", 8, seed=6)
    args = ["train", str(data), "--preset", "tiny", "--crop", "96", "--batch-images", "2", "--json"]
    result = CliRunner().invoke(app, [*args, "--run-dir", str(tmp_path / "run"), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 2 and "trained 1 step on 2 images" in result.stderr
    for photo in (data / "images").iterdir():
        photo.unlink()
    gone = CliRunner().invoke(app, [*args, "--run-dir", str(tmp_path / "gone"), "--max-steps", "1"])
    assert gone.exit_code == 3 and json.loads(gone.stdout)["head"] is None, gone.output


def test_a_curated_photo_is_read_for_training_within_its_own_size(tmp_path, monkeypatch):
    """`curate run --max-pixels` lets a large scan in; training read it at the default
    limit and skipped it. Its curated size is its limit now; a larger file under its name
    is still refused."""
    from PIL import Image

    from usesearch.io import files
    from usesearch.masks import rle
    from usesearch.training.data import Sample, load_image

    path = tmp_path / "scan.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(path)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:40] = True
    sample = Sample(str(path), [rle.encode(mask)], [["a red scan"]], files.read_bytes(str(path))[1])
    monkeypatch.setattr(files, "DEFAULT_MAX_PIXELS", 1_000)  # 3,072 pixels: past the default here
    rgb, masks = load_image(sample)
    assert rgb.shape == (48, 64, 3) and masks.shape == (1, 48, 64)
    Image.new("RGB", (64, 64)).save(path)
    with pytest.raises(usesearch.UsesearchError, match="4096 pixels exceeds the limit of 3072"):
        load_image(Sample(str(path), sample.rles, sample.texts))


def test_a_full_disk_says_which_run_and_how_to_go_on(tmp_path, monkeypatch):
    """It said only safetensors' "disk full: Error while serializing: I/O error: No space
    left on device (os error 28)": no folder, and no word of --resume."""
    import errno

    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.training import trainer_state

    real, calls = trainer_state.save_file, []

    def full_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_state, "save_file", full_on_second)
    data, run = write_dataset(tmp_path / "train", 8, seed=3), tmp_path / "run"
    args = ["train", str(data), "--run-dir", str(run), "--batch-images", "4", "--crop", "96", "--preset", "tiny"]
    result = CliRunner().invoke(app, [*args, "--max-steps", "6", "--checkpoint-every", "2"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert (
        f"disk full: cannot write the run in {run} at step 4; free space and run the same command with --resume" in said
    )


def test_data_with_fewer_than_two_texts_is_refused_before_a_model_loads(samples, tmp_path, monkeypatch):
    # It trained every step at loss 0.000000, exited 0 and advised more --batch-images.
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    monkeypatch.setattr("usesearch.training.train.create_use_and_clip", lambda *a: pytest.fail("a model loaded"))
    alike = [replace(s, texts=[["a Cat", "a  cat"] for _ in s.texts]) for s in samples]  # one text to CLIP
    with pytest.raises(usesearch.UsesearchError, match=r"holds one text only \('a Cat'\): a contrastive loss learns"):
        Trainer(alike, tmp_path / "alike", CFG)
    images = tmp_path / "data" / "images"
    write_dataset(tmp_path / "data", 1, seed=5)
    one_annotation_coco(tmp_path / "c.json", "5-00000.png", (128, 128), "shape", (2, 40))
    curate = ["curate", "run", str(tmp_path / "c.json"), "--input-format", "coco-instances", "--images", str(images)]
    assert CliRunner().invoke(app, [*curate, "--dataset-dir", str(tmp_path / "ds")]).exit_code == 0
    run = tmp_path / "run"
    trained = CliRunner().invoke(app, ["train", str(tmp_path / "ds"), "--run-dir", str(run), "--preset", "tiny"])
    assert trained.exit_code == 2 and len(trained.output.strip().splitlines()) == 1, trained.output
    assert "the training data holds one text only ('shape')" in trained.output and not run.exists()
