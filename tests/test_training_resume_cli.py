"""``usesearch train --resume`` as a user runs it: the run's own preset, and a finished
run resumed (the trainer's resume itself: test_training_resume.py)."""

import json

import pytest
from typer.testing import CliRunner

from tests.test_training import _losses, synthetic  # noqa: F401 (synthetic: a fixture this module uses)
from usesearch.cli.app import app


@pytest.fixture
def run_args(synthetic, tmp_path):  # noqa: F811 (the fixture imported above)
    """A tiny run of 3 steps, finished in tmp_path / "run": the command that ran it, without --preset."""
    args = ["train", str(synthetic[1]), "--run-dir", str(tmp_path / "run"), "--batch-images", "4", "--crop", "96"]
    args += ["--max-steps", "3", "--checkpoint-every", "2"]
    started = CliRunner().invoke(app, [*args, "--preset", "tiny"])
    assert started.exit_code == 0, started.output
    return args


def test_a_resume_builds_the_runs_own_preset_and_refuses_another(run_args, tmp_path, monkeypatch):
    # Without --preset, the default's (b16) weights were loaded and, absent, refused.
    again = CliRunner().invoke(app, [*run_args, "--resume"])
    assert again.exit_code == 0 and "nothing to train" in again.output, again.output
    monkeypatch.setattr("usesearch.training.train.create_use_and_clip", lambda *a: pytest.fail("a model loaded"))
    other = CliRunner().invoke(app, [*run_args, "--preset", "b16", "--resume"])
    said = f"--resume continues the run in {tmp_path / 'run'} as it was started: --preset tiny (now b16); give those"
    assert other.exit_code == 2 and said in other.output, other.output
    assert len(_losses(tmp_path / "run")) == 3


def test_a_resume_that_changes_several_settings_names_every_one_before_any_model_loads(run_args, tmp_path, monkeypatch):
    # It named the preset alone; given again, a second refusal named three more.
    monkeypatch.setattr("usesearch.training.train.create_use_and_clip", lambda *a: pytest.fail("a model loaded"))
    at = run_args.index("--batch-images")
    changed = [*run_args[:at], "--batch-images", "2", *run_args[at + 2 :], "--skip-kind", "region"]
    other = CliRunner().invoke(app, [*changed, "--preset", "b16", "--resume"])
    said = " ".join(other.output.split())
    assert other.exit_code == 2, other.output
    assert (
        "as it was started: --preset tiny (now b16), --batch-images 4 (now 2), "
        "no --skip-kind (now --skip-kind region); give those again" in said
    ), said
    assert len(_losses(tmp_path / "run")) == 3


def test_a_finished_run_resumed_says_only_that_nothing_was_trained(run_args, tmp_path):
    # It said "nothing to train", then "trained 3 steps on ..." as if it had, and --json "steps": 3 alone.
    again = CliRunner().invoke(app, [*run_args, "--preset", "tiny", "--resume", "--json"])
    assert again.exit_code == 0, again.output
    said = again.stderr.strip().splitlines()
    assert said == [f"the run in {tmp_path / 'run'} had finished (step 3 of 3): nothing to train"], said
    summary = json.loads(again.stdout)
    assert (summary["steps"], summary["trained_now"], summary["images"]) == (3, 0, 12)
    assert summary["head"] == str(tmp_path / "run" / "head")
    assert len(_losses(tmp_path / "run")) == 3


def test_a_run_resumed_part_way_says_the_steps_this_command_trained(synthetic, tmp_path, monkeypatch):  # noqa: F811
    """Resumed at step 2 of 3, it said "trained 3 steps", and an interrupted run's JSON
    had no ``trained_now``."""
    import tqdm

    class StopAtTwo(tqdm.tqdm):  # Ctrl-C once the second step is done (the bar is off here: its own count)
        steps = 0

        def update(self, n=1):
            super().update(n)
            StopAtTwo.steps += n
            if StopAtTwo.steps == 2:
                raise KeyboardInterrupt

    args = ["train", str(synthetic[1]), "--run-dir", str(tmp_path / "run"), "--batch-images", "4", "--crop", "96"]
    args += ["--max-steps", "3", "--checkpoint-every", "1", "--preset", "tiny"]
    with monkeypatch.context() as m:
        m.setattr(tqdm, "tqdm", StopAtTwo)
        cut = CliRunner().invoke(app, [*args, "--json"])
    assert cut.exit_code == 130, cut.output
    assert json.loads(cut.stdout)["trained_now"] == 2
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    said = " ".join(resumed.output.split())  # (stopped before step 2's checkpoint: resumed from step 1's)
    assert resumed.exit_code == 0 and "from its checkpoint of step 1 of 3" in said, said
    assert "trained 2 more steps (to step 3) on " in said
