"""What a Ray run prints: the CLI's own lines, and its JSON report alone on stdout.
Ray's driver printed a worker's death on stdout (two paragraphs per death, under
"(raylet)"), breaking `index --json`, and its C++ core a 400-character "E" line on
stderr on every run."""

import json
import os
import re
import sys

import pytest

pytest.importorskip("ray", reason="the distributed extra is not installed: pip install -e '.[distributed]'")

from tests.helpers import index_on_ray_in_a_process, write_photos  # noqa: E402
from usesearch.errors import UsesearchError  # noqa: E402
from usesearch.indexer import IndexOptions, SegmentIndex, fragments, index_paths, ray_cluster  # noqa: E402

RAY_NATIVE_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d [^\]]*\] \w+\.cc:\d+:"
)  # "[2026-12-04 09:34:02,353 E 1 1] core_worker.cc:..."


def test_a_photo_that_kills_its_worker_is_recorded_the_rest_indexed_and_stdout_left_to_the_report(
    tmp_path, monkeypatch
):
    """A native crash or an out-of-memory kill on one photo, through the CLI as a user
    runs it. Ray restarted the actor and retried the batch for ever, so nothing after
    the photo was committed; its driver printed each death on stdout (two paragraphs
    under "(raylet)", breaking ``--json``) and its C++ core a 400-character line on
    stderr. An actor call's photos go through SAM's encoder together (``--encoder-batch``,
    a GPU's), and a photo an actor died on is computed alone: the photo batched with
    the culprit is indexed. A photo whose decoding kills the actor (a native crash in a
    codec; decoding runs in the actor, fused with it) was retried for ever too."""
    for name in ("USESEARCH_DEBUG", "RAY_LOG_TO_STDERR", ray_cluster.BACKEND_LOG_LEVEL):  # each keeps Ray's lines
        monkeypatch.delenv(name, raising=False)
    photos = write_photos(tmp_path / "photos", ("coffee", "rocket", "chelsea", "astronaut"))
    calls = tmp_path / "calls.txt"
    patch = (
        "import os\n"
        "from usesearch.indexer import distributed\n"
        "class CrashesOnCoffee(distributed.SegmentWorker):\n"
        "    def compute(self, rgbs, paths):\n"
        "        names = [os.path.basename(p) for p in paths]\n"
        f"        with open({str(calls)!r}, 'a') as log:\n"
        "            log.write(','.join(names) + '\\n')\n"
        "        if 'coffee.png' in names:\n"
        "            os._exit(1)  # as a segfault or the OOM killer would end it\n"
        "        return super().compute(rgbs, paths)\n"
        "distributed.SegmentWorker = CrashesOnCoffee\n"
        "def decode_files(batch, **kwargs):  # in the actor: its decoder crashes on astronaut.png\n"
        "    from usesearch.indexer import ray_reads as there\n"
        "    decode = there.decode\n"
        "    def crashing(data, path, *args):\n"
        "        if path.endswith('astronaut.png'):\n"
        "            os._exit(1)\n"
        "        return decode(data, path, *args)\n"
        "    there.decode = crashing\n"
        "    try:\n"
        "        return there.decode_files(batch, **kwargs)\n"
        "    finally:\n"
        "        there.decode = decode\n"
        "distributed.decode_files = decode_files\n"
    )
    sam = ("--points-per-side", "4", "--pred-iou-thresh", "-10", "--stability-score-thresh", "-10")
    flags = ("--json", "--device", "cpu", *sam, "--encoder-batch", "4")
    returncode, out, err = index_on_ray_in_a_process(patch, photos, tmp_path / "db", *flags, masker="sam")
    assert returncode == 0, err[-2000:]
    # astronaut's decoding killed the actor twice, before any photo reached the models.
    # Then the other three together; then each alone (chelsea indexed, coffee kills its
    # actor again); then rocket alone.
    assert calls.read_text().split() == ["chelsea.png,coffee.png,rocket.png", "chelsea.png", "coffee.png", "rocket.png"]
    report = json.loads(out)  # stdout is the report alone
    assert report["proposals"]["done"] == 2 and report["proposals"]["failed"] == 2  # the photos after them too
    assert len(report["proposals"]["failures"]) == 2
    assert all("WorkerDied" in why for _, why in report["proposals"]["failures"])
    assert "(raylet)" not in out + err
    assert not [line for line in err.splitlines() if RAY_NATIVE_LINE.match(line)], err
    assert "failed: " in err and "coffee.png: WorkerDied" in err  # the CLI's own line says it
    with SegmentIndex.open(tmp_path / "db") as ix:
        failed = {os.path.basename(f.path): f for f in ix.store.failures()}
        assert failed.keys() == {"coffee.png", "astronaut.png"}
        assert all(f.error_class == "WorkerDied" and "died 2 times" in f.error_message for f in failed.values())
        assert ix.stats()["images_done"] == 2
        segments = ix.stats()["segments"]
    assert not list((tmp_path / "db" / fragments.FRAGMENTS).iterdir())  # no fragment, no note of an attempt left
    options = IndexOptions(
        preset="tiny",
        masker="sam",
        device="cpu",
        masker_options={"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -10.0},
    )
    others = [f for f in photos.rglob("*.png") if f.name not in failed]
    alone = index_paths(others, tmp_path / "sequential", options)
    assert alone.segments == segments > 0


def test_stderr_without_drops_only_the_lines_it_matches_written_natively_or_by_python(capfd):
    error = "[2026-12-06 07:30:00,100 E 5 5] core_worker.cc:9: an error of Ray's own"
    with ray_cluster.stderr_without(ray_cluster.NATIVE_NOTES):
        os.write(2, b"[2026-12-04 09:37:26,021 I 1 1] logging.cc:303: Set ray log level from environment variable X\n")
        # An address that answers but is no Ray: 20 of these before Ray's one-line error.
        os.write(2, b"[2026-12-06 06:50:01,123 W 77 77] gcs_client.cc:210: Failed to get cluster ID from GCS server\n")
        os.write(2, b"[2026-12-06 07:23:47,856 W 8 8] rpc_client.h:153: Failed to connect to GCS at address x:1\n")
        os.write(2, error.encode() + b"\n")
        os.write(2, b"a native line\n")
        print("a python line", file=sys.stderr)
    # (pytest's sys.stderr is not file descriptor 2: the lines may come in either order)
    assert sorted(capfd.readouterr().err.splitlines()) == sorted([error, "a native line", "a python line"])


@pytest.mark.parametrize(
    ("env", "level"),
    [
        ({}, "fatal"),
        ({"USESEARCH_DEBUG": ""}, "fatal"),
        ({"USESEARCH_DEBUG": "1"}, None),
        ({"RAY_LOG_TO_STDERR": "1"}, None),
    ],
)
def test_rays_native_log_level_is_fatal_unless_asked_and_the_environment_is_left_as_it_was(monkeypatch, env, level):
    import ray

    seen: list[str | None] = []
    for name in ("USESEARCH_DEBUG", "RAY_LOG_TO_STDERR", ray_cluster.BACKEND_LOG_LEVEL):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(os.environ.get(ray_cluster.BACKEND_LOG_LEVEL)))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray_cluster, "let_ray_data_threads_end", lambda: None)
    with ray_cluster.ray_session():
        assert ray_cluster.BACKEND_LOG_LEVEL not in os.environ
    assert seen == [level]


def test_a_report_ray_prints_until_its_shutdown_stays_off_stdout(monkeypatch, capsys):
    """Ray's thread that prints the cluster's reports runs until ``ray.shutdown``; Ray
    before 2.38 calls its printer with the report alone."""
    import ray
    from ray._private import worker as ray_worker

    monkeypatch.delenv("USESEARCH_DEBUG", raising=False)
    report = {"lines": ["A worker died or was killed"], "pid": "raylet", "is_err": False}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_cluster, "_start_ray", lambda address: None)
    monkeypatch.setattr(ray_cluster, "let_ray_data_threads_end", lambda: None)
    monkeypatch.setattr(ray, "shutdown", lambda: ray_worker.print_to_stdstream(report, False))
    with ray_cluster.ray_session():
        ray_worker.print_to_stdstream(report)
    assert "worker died" not in capsys.readouterr().out
    monkeypatch.setenv("USESEARCH_DEBUG", "1")
    with ray_cluster.ray_session():
        pass
    printed = capsys.readouterr()
    assert "worker died" in printed.err and "worker died" not in printed.out


def test_ray_auto_with_no_cluster_running_is_said_in_our_flags(monkeypatch):
    """Ray's words ("Could not find any running Ray instance. Please specify the one to
    connect to by setting `--address` flag or `RAY_ADDRESS`") named a flag usesearch lacks."""
    import ray

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify ... `--address` flag")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(
        UsesearchError, match="--ray auto: no Ray cluster runs on this machine .*--ray HOST:PORT"
    ) as said:
        with ray_cluster.ray_session("auto"):
            pass
    assert "--address" not in str(said.value)
    with pytest.raises(ConnectionError):  # a cluster address given: Ray's own reason stands
        with ray_cluster.ray_session("10.0.0.1:6379"):
            pass

    def dead_cluster(**kwargs):  # auto found an address (RAY_ADDRESS, a stale file): not "none runs"
        raise ConnectionError("Failed to connect to GCS at address 10.0.0.1:6379")

    monkeypatch.setattr(ray, "init", dead_cluster)
    with pytest.raises(ConnectionError, match="Failed to connect to GCS"):
        with ray_cluster.ray_session("auto"):
            pass


def test_ray_data_is_set_up_before_any_dataset_and_its_few_photos_warning_left_out(ray_local, recwarn):
    """A top-up run of fewer photos than --workers printed Ray Data's UserWarning (its
    file, line and "warnings.warn(" too); and its order was set after the first dataset
    was made, which ran unordered."""
    import warnings

    import ray.data

    few = "The minimum number of concurrent actors (min_size=5) ... configure override_num_blocks"
    import logging

    ray.data.DataContext.get_current().execution_options.preserve_order = False
    logging.getLogger("ray.data").setLevel(logging.INFO)  # (a caller's own Ray and its logging)
    filters = list(warnings.filters)
    with ray_cluster.ray_session():
        assert ray.data.from_items([1]).context.execution_options.preserve_order
        assert logging.getLogger("ray.data").level == logging.ERROR
        warnings.warn(few, UserWarning, stacklevel=1)
    assert not [w for w in recwarn if few in str(w.message)]
    assert logging.getLogger("ray.data").level == logging.INFO and warnings.filters == filters  # theirs again
    warnings.warn(few, UserWarning, stacklevel=1)  # (past the session: Python's own filters again)
    assert [w for w in recwarn if few in str(w.message)]
