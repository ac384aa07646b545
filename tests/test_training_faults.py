"""Training survives what a long run meets: a kill between checkpoint files, a resume
on other data, an unreadable photo, a non-finite loss, a tampered checkpoint."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import usesearch
from usesearch.models.checkpoint import load_head
from usesearch.training import train as train_module
from usesearch.training import trainer_state as state_module
from usesearch.training.config import TrainConfig
from usesearch.training.data import load_samples
from usesearch.training.synthetic import write_dataset
from usesearch.training.train import Trainer, text_key

CFG = TrainConfig(preset="tiny", batch_images=4, crop=96, max_steps=6, checkpoint_every=2)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return load_samples([write_dataset(tmp_path_factory.mktemp("faults") / "train", 16, seed=3)])


def _log_steps(out):
    return [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))]


def test_a_kill_between_checkpoint_files_resumes_weights_and_optimizer_of_one_step(samples, tmp_path, monkeypatch):
    """Killed after step 4's head was written but before the trainer's state: the resume must
    start from step 2 with step 2's weights, and end where an unbroken run ends."""
    Trainer(samples, tmp_path / "whole", CFG).run()
    real_write = state_module.write_atomic

    def killed_at_step_4(path, data, **kw):
        if path.name == state_module.TRAINER_FILE and (tmp_path / "cut" / "step-0000004.json").is_file():
            raise KeyboardInterrupt
        return real_write(path, data, **kw)

    monkeypatch.setattr(state_module, "write_atomic", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        Trainer(samples, tmp_path / "cut", CFG).run()
    monkeypatch.setattr(state_module, "write_atomic", real_write)
    resumed = Trainer(samples, tmp_path / "cut", CFG)
    resumed.resume()
    assert resumed.step == 2
    resumed.run()
    assert _log_steps(tmp_path / "cut") == [1, 2, 3, 4, 5, 6]  # the rows past the checkpoint are not doubled
    whole, cut = (load_head(tmp_path / out / "head", usesearch.get_preset("tiny"))[0] for out in ("whole", "cut"))
    assert all(torch.allclose(whole[k], cut[k], atol=1e-5) for k in whole)


def test_resume_on_other_data_is_refused(samples, tmp_path):
    from dataclasses import replace

    Trainer(samples, tmp_path, CFG).run(until=2)
    retexted = [replace(s, texts=[["something else"] for _ in s.texts]) for s in samples]  # same photos and counts
    for other in (samples[:8], samples[::-1], retexted):
        with pytest.raises(usesearch.UsesearchError, match="on the data it started on: 16 images"):
            Trainer(other, tmp_path, CFG).resume()
    with pytest.raises(usesearch.UsesearchError, match="holds no checkpoint to continue"):
        Trainer(samples, tmp_path / "mistyped", CFG).resume()  # never starts over silently
    state_file = tmp_path / state_module.TRAINER_FILE
    whole = state_file.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"<html>", pickle_of_a_list()):  # cut short by a full disk; not ours
        state_file.write_bytes(damaged)
        with pytest.raises(usesearch.UsesearchError, match="trainer.safetensors is damaged .*train anew in another"):
            Trainer(samples, tmp_path, CFG).resume()
    state_file.write_bytes(whole)
    step_head = tmp_path / "step-0000002.safetensors"
    step_head.write_bytes(step_head.read_bytes()[:100])
    with pytest.raises(usesearch.UsesearchError, match="the head of step 2 is unusable .*train anew in another"):
        Trainer(samples, tmp_path, CFG).resume()


def pickle_of_a_list() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save([1, 2], buffer)
    return buffer.getvalue()


def test_ctrl_c_finishes_the_step_writes_its_checkpoint_and_resume_ends_as_one_run(samples, tmp_path):
    """The first Ctrl-C stops training between steps with that step's checkpoint
    written (checkpoint_every 2, interrupted at step 3): nothing trained is lost."""
    import os
    import signal

    Trainer(samples, tmp_path / "whole", CFG).run()

    def ctrl_c_at_step_3(step, total, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cut = Trainer(samples, tmp_path / "cut", CFG)
    with pytest.raises(KeyboardInterrupt):
        cut.run(ctrl_c_at_step_3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    resumed = Trainer(samples, tmp_path / "cut", CFG)
    resumed.resume()
    assert resumed.step == 3
    resumed.run()
    assert _log_steps(tmp_path / "cut") == [1, 2, 3, 4, 5, 6]
    whole, cut_head = (load_head(tmp_path / out / "head", usesearch.get_preset("tiny"))[0] for out in ("whole", "cut"))
    assert all(torch.allclose(whole[k], cut_head[k], atol=1e-5) for k in whole)


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


def test_a_head_whose_weights_do_not_match_its_config_is_refused(samples, tmp_path):
    Trainer(samples, tmp_path, CFG).run(until=2)
    config = tmp_path / "head.json"
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(usesearch.UsesearchError, match="sha256 differs"):
        load_head(tmp_path / "head", usesearch.get_preset("tiny"))


def test_batches_are_the_same_whatever_the_loader_threads(samples, tmp_path):
    """Photos are prepared on several threads, in any order: each one's draws depend on
    (seed, step, position) only, so the batch is the one a single thread makes."""
    from dataclasses import replace

    one, four = (Trainer(samples, tmp_path / str(n), replace(CFG, loader_threads=n)) for n in (1, 4))
    for step in (0, 5):
        a, b = one.make_batch(step), four.make_batch(step)
        assert a[4] == b[4] and torch.equal(a[3], b[3])
        assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3]))


def test_one_training_run_a_run_folder(samples, tmp_path):
    """A second run into a folder a run is writing to is refused, not interleaved."""
    from usesearch.io.locks import one_writer
    from usesearch.training.train import LOCK_FILE

    with one_writer(tmp_path / LOCK_FILE, RuntimeError):  # as a run in another process holds it
        with pytest.raises(usesearch.UsesearchError, match="another training run .* is writing to"):
            Trainer(samples, tmp_path, CFG).run(until=1)
    assert not (tmp_path / "log.csv").exists()
    Trainer(samples, tmp_path, CFG).run(until=1)  # released: the folder is free again
    assert (tmp_path / "step-0000001.json").is_file()


def test_steps_whose_batch_has_no_negative_are_counted(samples, tmp_path):
    """One image a batch with one text: the loss is 0 and nothing is learned; counted,
    so the run can say so."""
    from dataclasses import replace

    single = [replace(s, rles=s.rles[:1], texts=s.texts[:1]) for s in samples[:4]]
    trainer = Trainer(single, tmp_path, replace(CFG, batch_images=1, max_steps=3))
    trainer.run()
    assert trainer.steps_without_negatives == 3
    rich = Trainer(samples, tmp_path / "rich", replace(CFG, max_steps=2))
    rich.run()
    assert rich.steps_without_negatives == 0


def test_keep_checkpoints_keeps_the_newest_step_heads_and_resume_still_works(samples, tmp_path):
    from dataclasses import replace

    cfg = replace(CFG, checkpoint_every=1, keep_checkpoints=2)
    Trainer(samples, tmp_path, cfg).run(until=4)
    assert sorted(p.name for p in tmp_path.glob("step-*.json")) == ["step-0000003.json", "step-0000004.json"]
    resumed = Trainer(samples, tmp_path, cfg)
    resumed.resume()
    assert resumed.step == 4


def test_keep_checkpoints_never_drops_the_head_the_trainer_state_names(samples, tmp_path, monkeypatch):
    """A killed run left step 4's head but the trainer's state at step 2; the resumed run,
    keeping one head, must keep its own newest (3), not the stale 4."""
    from dataclasses import replace

    real_write = state_module.write_atomic

    def killed_at_step_4(path, data, **kw):
        if path.name == state_module.TRAINER_FILE and (tmp_path / "step-0000004.json").is_file():
            raise KeyboardInterrupt
        return real_write(path, data, **kw)

    monkeypatch.setattr(state_module, "write_atomic", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        Trainer(samples, tmp_path, CFG).run()
    monkeypatch.setattr(state_module, "write_atomic", real_write)
    cfg = replace(CFG, checkpoint_every=1, keep_checkpoints=1)
    resumed = Trainer(samples, tmp_path, cfg)
    resumed.resume()
    resumed.run(until=3)
    assert [p.name for p in tmp_path.glob("step-*.json")] == ["step-0000003.json"]
    again = Trainer(samples, tmp_path, cfg)
    again.resume()
    assert again.step == 3


def test_threads_and_the_prefetched_batch_train_as_one_thread_does(samples, tmp_path):
    from dataclasses import replace

    for n in (1, 4):
        Trainer(samples, tmp_path / str(n), replace(CFG, loader_threads=n, max_steps=4)).run()
    assert _losses(tmp_path / "1") == pytest.approx(_losses(tmp_path / "4"), abs=1e-6)


def _losses(out):
    return [float(r["loss"]) for r in csv.DictReader(open(out / "log.csv"))]


def test_an_unreadable_photo_is_listed_once_across_a_resume(samples, tmp_path):
    from dataclasses import replace

    gone = replace(samples[0], path=str(tmp_path / "gone.png"))
    data = [gone, *samples[1:]]
    cfg = replace(CFG, batch_images=8, max_steps=6, checkpoint_every=2)
    Trainer(data, tmp_path / "run", cfg).run(until=2)
    resumed = Trainer(data, tmp_path / "run", cfg)
    resumed.resume()
    resumed.run()
    lines = (tmp_path / "run" / "unreadable.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [gone.path] and gone.path in resumed.unreadable


def test_train_and_curate_json_are_their_reports_alone_on_stdout(tmp_path):
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    data = write_dataset(tmp_path / "data", 4, seed=5)
    args = ["train", str(data), "--run-dir", str(tmp_path / "run"), "--preset", "tiny", "--crop", "96"]
    trained = CliRunner().invoke(app, [*args, "--max-steps", "1", "--batch-images", "2", "--json"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["steps"] == 1 and summary["images"] == 2 and summary["unreadable"] == {}
    coco = {
        "categories": [{"id": 1, "name": "shape"}],
        "images": [{"id": 1, "file_name": "5-00000.png", "height": 128, "width": 128}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 40, 2, 40, 40, 2, 40]]}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
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


def test_a_new_run_does_not_inherit_the_skips_of_a_run_killed_before_its_first_checkpoint(samples, tmp_path):
    (tmp_path / "log.csv").write_text(",".join(train_module.LOG_HEADER) + "\n1,0,0.5,0.001,3,0.1\n")  # left by the
    (tmp_path / "unreadable.txt").write_text(f"{samples[0].path}\tcannot read\n")  # killed run, as is this
    Trainer(samples, tmp_path, CFG).run(until=2)
    resumed = Trainer(samples, tmp_path, CFG)
    resumed.resume()
    assert resumed.unreadable == {} and not (tmp_path / "unreadable.txt").exists()


def test_ctrl_c_during_the_last_step_is_a_finished_run(samples, tmp_path):
    """The run ends at its last step anyway: no interruption to report, the head whole."""
    import os
    import signal

    def ctrl_c_at_the_end(step, total, loss):
        if step == total:
            os.kill(os.getpid(), signal.SIGINT)

    trainer = Trainer(samples, tmp_path, CFG)
    head = trainer.run(ctrl_c_at_the_end)  # raises nothing
    assert trainer.step == CFG.max_steps and head.is_file()


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
    result = CliRunner().invoke(app, [*args, "--max-steps", "2", "--batch-images", "2", "--json"])
    assert result.exit_code == 3, result.output
    assert "every photo failed (4); nothing was trained on" in result.stderr
    assert (
        "use it with --head" not in result.output
        and "2 steps ran without a readable image: the head learned" in result.output
    )
    assert "--batch-images helps" not in result.output  # no batch had photos: not a batch-size problem
    summary = json.loads(result.stdout)
    assert summary["images"] == 0 and summary["head"] is None and len(summary["unreadable"]) == 4


def test_the_trainer_state_is_safetensors_and_a_run_from_before_resumes_from_trainer_pt(samples, tmp_path):
    """No pickle in a run folder: the optimizer's tensors as tensors, the rest as JSON in
    the header. A run written before kept the same state in trainer.pt (torch.save),
    which resumes to the same weights and is then replaced by the new file."""
    from safetensors import safe_open

    Trainer(samples, tmp_path / "whole", CFG).run()
    Trainer(samples, tmp_path / "old", CFG).run(until=2)
    state_file = tmp_path / "old" / state_module.TRAINER_FILE
    with safe_open(str(state_file), "pt") as f:
        assert json.loads(f.metadata()["trainer"])["step"] == 2 and any(k.endswith(".exp_avg") for k in f.keys())
    state = state_module.read_trainer_state(state_file)
    torch.save(state, tmp_path / "old" / "trainer.pt")  # as runs from before wrote it
    state_file.unlink()
    resumed = Trainer(samples, tmp_path / "old", CFG)
    resumed.resume()
    assert resumed.step == 2
    resumed.run()
    assert not (tmp_path / "old" / "trainer.pt").exists() and state_file.is_file()
    whole, old = (load_head(tmp_path / out / "head", usesearch.get_preset("tiny"))[0] for out in ("whole", "old"))
    assert all(torch.equal(whole[k], old[k]) for k in whole)


def test_a_new_run_refuses_a_folder_holding_the_users_files_and_deletes_none(samples, tmp_path):
    """A run writes log.csv, head.* and unreadable.txt: a user's files of those names
    were replaced or deleted without a word."""
    mine = {"log.csv": "date,weight\n1,2\n", "unreadable.txt": "my list\n", "head.json": '{"mine": 1}'}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(usesearch.UsesearchError, match="holds files that are not a training run's .*head.json"):
        Trainer(samples, tmp_path, CFG).run(until=1)
    assert {name: (tmp_path / name).read_text() for name in mine} == mine


def test_a_kill_mid_checkpoint_leaves_no_temporary_file_behind_the_next_run(samples, tmp_path):
    """write_atomic's temporary file of a writer killed before its rename is as big as a
    checkpoint; the next run in the folder removes it (a live writer's is kept)."""
    import os
    import subprocess

    Trainer(samples, tmp_path, CFG).run(until=2)
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = tmp_path / f".trainer.safetensors.{gone.pid}.tmp"
    live = tmp_path / f".step-0000003.json.{os.getpid()}.tmp"
    users = tmp_path / f".notes.{gone.pid}.tmp"  # named like one, of a file no run writes: the user's
    for made in (orphan, live, users):
        made.write_bytes(b"x" * 1000)
    resumed = Trainer(samples, tmp_path, CFG)
    resumed.resume()
    resumed.run(until=4)
    assert not orphan.exists() and live.exists() and users.exists()


def test_a_run_killed_in_its_first_step_leaves_a_folder_a_new_run_takes(samples, tmp_path):
    """Its log's header was still in a buffer: an empty log.csv, which neither a new run
    nor --resume took. A file manager's .DS_Store is no file of the user's work either;
    a finished run whose trainer file was deleted is still a run, not a killed one."""
    (tmp_path / "log.csv").write_text("")
    (tmp_path / train_module.LOCK_FILE).write_text("")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    Trainer(samples, tmp_path, CFG).run(until=1)
    assert _log_steps(tmp_path) == [1]
    finished = tmp_path / "finished"
    Trainer(samples, finished, CFG).run(until=2)
    (finished / "trainer.safetensors").unlink()
    with pytest.raises(usesearch.UsesearchError, match="holds files that are not a training run's \\(head.json"):
        Trainer(samples, finished, CFG).run(until=2)


def test_a_step_head_with_a_tampered_record_is_refused_as_damaged(samples, tmp_path):
    Trainer(samples, tmp_path, CFG).run(until=2)
    meta_file = tmp_path / "step-0000002.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "data": "x"}))
    with pytest.raises(usesearch.UsesearchError, match="the head of step 2 is damaged"):
        Trainer(samples, tmp_path, CFG).resume()


def test_a_run_cut_short_by_max_steps_counts_the_photos_it_reached(tmp_path):
    from typer.testing import CliRunner

    from usesearch.cli.app import app

    data = write_dataset(tmp_path / "data", 8, seed=6)
    args = ["train", str(data), "--preset", "tiny", "--crop", "96", "--batch-images", "2", "--json"]
    result = CliRunner().invoke(app, [*args, "--run-dir", str(tmp_path / "run"), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 2 and "trained 1 steps on 2 images" in result.stderr
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
