"""A training run's checkpoints and its folder: a kill between checkpoint files or in
the middle of one, Ctrl-C, a resume on other data or from a damaged or tampered
checkpoint, the step heads kept, a run folder holding the user's files or another run."""

import json

import pytest
import torch

import usesearch
from tests.test_training_faults import CFG, _log_steps
from usesearch.models.checkpoint import load_head
from usesearch.training import train as train_module
from usesearch.training import trainer_state as state_module
from usesearch.training.train import Trainer


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
    assert whole and whole.keys() == cut.keys()
    assert all(torch.allclose(whole[k], cut[k], atol=1e-5) for k in whole)


def test_resume_on_other_data_is_refused(samples, tmp_path):
    from dataclasses import replace

    Trainer(samples, tmp_path, CFG).run(until=2)
    # The same photos and counts, other texts (two at least: one is refused before the resume).
    retexted = [replace(s, texts=[[f"something else {i}"] for i in range(len(s.texts))]) for s in samples]
    for other in (samples[:8], samples[::-1], retexted):
        with pytest.raises(usesearch.UsesearchError, match="on the data it started on: 16 images"):
            Trainer(other, tmp_path, CFG).resume()
    with pytest.raises(usesearch.UsesearchError, match="holds no checkpoint to continue"):
        Trainer(samples, tmp_path / "mistyped", CFG).resume()  # never starts over silently
    state_file = tmp_path / state_module.TRAINER_FILE
    whole = state_file.read_bytes()
    flipped = whole[:-10] + bytes([whole[-10] ^ 0x40]) + whole[-9:]  # an optimizer moment's bit: resumed silently
    for damaged in (whole[: len(whole) // 2], b"<html>", pickle_of_a_list(), flipped):  # cut short; not ours
        state_file.write_bytes(damaged)
        with pytest.raises(usesearch.UsesearchError, match="trainer.safetensors is damaged .*train anew in another"):
            Trainer(samples, tmp_path, CFG).resume()
    state_file.write_bytes(whole)
    step_head = tmp_path / "step-0000002.safetensors"
    step_head.write_bytes(step_head.read_bytes()[:100])
    said: list[str] = []  # head.safetensors holds step 2's weights too: the run goes on from them
    Trainer(samples, tmp_path, CFG, say=said.append).resume()
    assert said and "resuming from head.safetensors, that step's too" in said[0]
    latest = tmp_path / "head.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # both cut short: nothing to go on from
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
    assert whole and whole.keys() == cut_head.keys()
    assert all(torch.allclose(whole[k], cut_head[k], atol=1e-5) for k in whole)


def test_a_head_whose_weights_do_not_match_its_config_is_refused(samples, tmp_path):
    Trainer(samples, tmp_path, CFG).run(until=2)
    config = tmp_path / "head.json"
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(usesearch.UsesearchError, match="sha256 differs"):
        load_head(tmp_path / "head", usesearch.get_preset("tiny"))


def test_one_training_run_a_run_folder(samples, tmp_path):
    """A second run into a folder a run is writing to is refused, not interleaved."""
    from usesearch.io.locks import one_writer
    from usesearch.training.train import LOCK_FILE

    with one_writer(tmp_path / LOCK_FILE, RuntimeError):  # as a run in another process holds it
        with pytest.raises(usesearch.UsesearchError, match="another training run .* is writing to"):
            Trainer(samples, tmp_path, CFG).run(until=1)
        # Before its first checkpoint: --resume said the folder held none, "without --resume a new run starts".
        with pytest.raises(usesearch.UsesearchError, match="another training run .* is writing to"):
            Trainer(samples, tmp_path, CFG).resume()
    assert not (tmp_path / "log.csv").exists()
    with pytest.raises(usesearch.UsesearchError, match="holds no checkpoint to continue"):  # (that run gone)
        Trainer(samples, tmp_path, CFG).resume()
    Trainer(samples, tmp_path, CFG).run(until=1)  # released: the folder is free again
    assert (tmp_path / "step-0000001.json").is_file()


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


def test_keep_checkpoints_makes_room_before_a_save_keeping_the_head_a_resume_needs(samples, tmp_path, monkeypatch):
    """Old heads went only after a save succeeded: on a full disk, a resume with
    --keep-checkpoints freed nothing, and the user deleted step-* files by hand."""
    from dataclasses import replace

    from usesearch.training import train as train_module

    seen: list[list[str]] = []
    real_save = train_module.save_head

    def save_head(path, *args, **kwargs):
        if path.name.startswith("step-"):  # the step heads on disk as the new one is written
            seen.append(sorted(p.stem for p in tmp_path.glob("step-*.json")))
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_head", save_head)
    Trainer(samples, tmp_path, replace(CFG, checkpoint_every=1, keep_checkpoints=2)).run(until=3)
    assert seen == [[], ["step-0000001"], ["step-0000002"]], seen  # step 1 gone before step 3's write
    assert sorted(p.stem for p in tmp_path.glob("step-*.json")) == ["step-0000002", "step-0000003"]


def test_an_unreadable_photo_is_listed_once_across_a_resume(samples, tmp_path):
    from dataclasses import replace

    gone = replace(samples[0], path=str(tmp_path / "gone.png"))
    data = [gone, *samples[1:]]
    cfg = replace(CFG, batch_images=8, max_steps=6, checkpoint_every=2)
    Trainer(data, tmp_path / "run", cfg).run(until=2)
    said: list[str] = []  # (the photo back meanwhile stays skipped, untried: said, not silent)
    resumed = Trainer(data, tmp_path / "run", replace(cfg, precision="float32"), say=said.append)
    resumed.resume()
    resumed.run()
    lines = (tmp_path / "run" / "unreadable.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [gone.path] and gone.path in resumed.unreadable
    assert f"1 photo(s) in {tmp_path / 'run' / 'unreadable.txt'} stay skipped, untried" in said[-1], said
    # Another precision goes on (a run moved to a GPU), said: the head is no longer the uninterrupted run's.
    assert said[0].startswith("--precision float32 from step 3, where the run began in auto: "), said


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
    assert whole and whole.keys() == old.keys()
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


def test_a_run_started_when_the_resize_scaled_the_photo_resumes_as_it_started(samples, tmp_path):
    """The random resize now scales the photo as inference shows it; a run started before
    (its config records no ``resize_base``) goes on drawing as it started, and ends as
    its uninterrupted run, not half in each geometry."""
    from dataclasses import replace

    before = replace(CFG, resize_base="photo")
    Trainer(samples, tmp_path / "whole", before).run()
    Trainer(samples, tmp_path / "cut", before).run(until=2)
    for step_file in (tmp_path / "cut").glob("step-*.json"):  # as such a run wrote them
        meta = json.loads(step_file.read_text())
        del meta["train_config"]["resize_base"]
        step_file.write_text(json.dumps(meta))
    resumed = Trainer(samples, tmp_path / "cut", CFG)  # today's default: the crop
    resumed.resume()
    assert resumed.cfg.resize_base == "photo"
    resumed.run()
    whole, cut = (load_head(tmp_path / out / "head", usesearch.get_preset("tiny"))[0] for out in ("whole", "cut"))
    assert whole and whole.keys() == cut.keys()
    assert all(torch.allclose(whole[k], cut[k], atol=1e-5) for k in whole)


def test_resume_with_other_skipped_text_kinds_is_refused_naming_the_option(samples, tmp_path):
    from dataclasses import replace

    without_crowd = [replace(s, left_out=("crowd",)) for s in samples]  # as load_samples(dirs, ("crowd",)) gives
    Trainer(without_crowd, tmp_path, replace(CFG, skip_kinds=("crowd",))).run(until=2)
    with pytest.raises(
        usesearch.UsesearchError, match=r"as it was started: --skip-kind crowd \(now no --skip-kind\); give those again"
    ):
        Trainer(samples, tmp_path, CFG).resume()
    resumed = Trainer(without_crowd, tmp_path, replace(CFG, skip_kinds=("crowd",)))
    resumed.resume()
    assert resumed.step == 2
    # The kinds are gone once loaded: samples loaded with others are refused, not trained on as if left out.
    with pytest.raises(ValueError, match=r"not loaded leaving out \('crowd',\): load_samples\(dirs, cfg.skip_kinds\)"):
        Trainer(samples, tmp_path / "other", replace(CFG, skip_kinds=("crowd",)))


def test_sigterm_stops_training_between_steps_and_is_said_as_sigterm(samples, tmp_path):
    """`timeout`, `docker stop`, systemd: training's own handler took SIGTERM as a Ctrl-C
    and the command exited 130, where every other command exits 143 (``interrupts``)."""
    import os
    import signal

    from usesearch import interrupts

    before = signal.getsignal(signal.SIGTERM)  # (Python's default; Ray's, where a test before this one started it)
    with interrupts.counting():
        trainer = Trainer(samples, tmp_path, CFG)
        with pytest.raises(KeyboardInterrupt):
            trainer.run(lambda step, *a: step == 3 and os.kill(os.getpid(), signal.SIGTERM))
        assert interrupts.terminated()
    assert trainer.saved_step == trainer.step == 3 and signal.getsignal(signal.SIGTERM) is before


def test_a_resumed_run_counts_its_steps_without_negatives_from_the_start(samples, tmp_path):
    """The summary's "N of M steps had fewer than two different texts" counted only the
    steps of the last process: 4 of 30 after a resume where the whole run had 6."""
    from dataclasses import replace

    # Three photos of one segment (no negative in a batch of one) and one of several: one epoch.
    single = [replace(s, rles=s.rles[:1], texts=s.texts[:1]) for s in samples[:3]] + [samples[3]]
    config = replace(CFG, batch_images=1, max_steps=4)
    first = Trainer(single, tmp_path, config)
    first.run(until=2)
    resumed = Trainer(single, tmp_path, config)
    resumed.resume()
    assert resumed.step == 2 and resumed.steps_without_negatives == first.steps_without_negatives >= 1
    resumed.run()
    assert resumed.steps_without_negatives == 3


def test_batches_of_one_photo_none_of_which_can_give_a_negative_are_refused(samples, tmp_path):
    """Every step's loss had no negative: the run exited 0 with a head that learned nothing."""
    from dataclasses import replace

    single = [replace(s, rles=s.rles[:1], texts=s.texts[:1]) for s in samples[:4]]
    with pytest.raises(usesearch.UsesearchError, match="no photo holds two segments with different texts"):
        Trainer(single, tmp_path, replace(CFG, batch_images=1))
    assert Trainer(single, tmp_path, replace(CFG, batch_images=2)).total_steps  # two photos a batch: negatives
