"""A Ray actor's call on a GPU: SAM's encoder a group ahead within the call, as the
sequential indexer runs it, with the death accounting of one batch of both groups;
and its photos decoded by CPU tasks apart. The actor's class is plain Python: here it
runs in this process, the side stream's thread forced on (a GPU's default)."""

import threading

import numpy as np
import pytest

from usesearch.indexer import IndexOptions, distributed, fragments
from usesearch.indexer.distributed import SegmentWorker

SAM = {"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -10.0, "encoder_batch": 2}


def photos(count: int) -> list[np.ndarray]:
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128 x 128
    return [np.ascontiguousarray(np.roll(rgb, 9 * n, axis=1)) for n in range(count)]


def call(worker: SegmentWorker, rgbs: list[np.ndarray], names: list[str]) -> dict:
    """The actor's ``__call__`` on a batch as Ray Data hands it: photos of one size
    arrive as one array, whose rows are new views at every index."""
    return worker(
        {
            "rgb": np.stack(rgbs),
            "path": np.array(names, object),
            "fs_path": np.array([n.encode() for n in names], object),
            "sha256": np.array(names, object),
            "file_stat": np.array([""] * len(names), object),
            "error": np.array([""] * len(names), object),
        }
    )


@pytest.fixture(scope="module")
def options():
    return IndexOptions(preset="tiny", masker="sam", device="cpu", masker_options=SAM)


def test_the_next_group_is_encoded_aside_its_attempts_noted_first_and_the_fragments_are_in_lines(
    options, tmp_path, monkeypatch
):
    names = ["a", "b", "c", "d", "e", "f", "r"]
    rgbs = photos(len(names))
    reference = SegmentWorker(options, str(tmp_path / "in-line"), threads=1)
    call(reference, rgbs, names)

    worker = SegmentWorker(options, str(tmp_path / "ahead"), threads=1)
    generator = worker.masker.generator
    monkeypatch.setattr(generator.ahead, "on", True)  # a GPU's default
    fragments.attempt(worker.db_dir, "r")  # an actor died on r before: a retry, computed alone
    events: list[tuple] = []
    compute, encode_ahead, encode = worker.compute, generator.encode_ahead, generator._encode

    def computing(group, paths):
        events.append(("compute", *paths))
        return compute(group, paths)

    def ahead(group):
        shas = [names[next(n for n, rgb in enumerate(rgbs) if np.array_equal(rgb, photo))] for photo in group]
        events.append(("ahead", *shas, {s: fragments.deaths(worker.db_dir, s) for s in names}))
        encode_ahead(group)

    encoded_in: list[tuple[str, int]] = []

    def encoding(crops, clock):
        encoded_in.append((threading.current_thread().name.split("_")[0], len(crops)))
        return encode(crops, clock)

    monkeypatch.setattr(worker, "compute", computing)
    monkeypatch.setattr(generator, "encode_ahead", ahead)
    monkeypatch.setattr(generator, "_encode", encoding)
    out = call(worker, rgbs, names)

    # a, b in line (the first group of its size: compiled there); c, d in line too (their
    # start came before a group of two had run); e, f aside while c, d decode; r alone, last.
    noted = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 1, "f": 1, "r": 1}
    assert events == [
        ("compute", "a", "b"),
        ("ahead", "e", "f", noted),
        ("compute", "c", "d"),
        ("compute", "e", "f"),
        ("compute", "r"),
    ]
    assert sorted(encoded_in) == [("MainThread", 1), ("MainThread", 2), ("MainThread", 2), ("usesearch-encoder", 2)]
    assert list(out["error"]) == [""] * len(names) and min(out["segments"]) > 0
    for name in names:  # the same fragments as in line, and no note of an attempt left
        want = fragments.read_fragment(fragments.fragment_path(reference.db_dir, name))
        got = fragments.read_fragment(fragments.fragment_path(worker.db_dir, name))
        assert got[:2] == want[:2] and np.array_equal(got[2], want[2]), name
        assert fragments.deaths(worker.db_dir, name) == 0


def test_an_actor_allowed_one_death_a_photo_computes_each_alone_and_nothing_ahead(options, tmp_path, monkeypatch):
    """With ``max_deaths`` 1 a death must be its photo's alone: nothing is batched with
    it, so nothing may be encoded (and noted) ahead of it either."""
    worker = SegmentWorker(options, str(tmp_path / "db"), threads=1)
    worker.max_deaths = 1
    generator = worker.masker.generator
    monkeypatch.setattr(generator.ahead, "on", True)  # a GPU's default
    generator.ahead.ran_in_line([None])  # a group of one has run in line: it could go aside
    started, computed = [], []
    monkeypatch.setattr(generator, "encode_ahead", lambda group: started.append(len(group)))
    compute = worker.compute
    monkeypatch.setattr(worker, "compute", lambda group, paths: computed.append(paths) or compute(group, paths))
    out = call(worker, photos(3), ["a", "b", "c"])
    assert computed == [["a"], ["b"], ["c"]] and started == []
    assert list(out["error"]) == ["", "", ""]


def test_on_a_cpu_nothing_is_noted_or_started_ahead(options, tmp_path, monkeypatch):
    """Off (a CPU's default), each group's attempts are noted as it starts, as before:
    a death charges only the group under way."""
    worker = SegmentWorker(options, str(tmp_path / "db"), threads=1)
    deaths_seen = []
    compute = worker.compute
    names = ["a", "b", "c", "d"]
    monkeypatch.setattr(
        worker,
        "compute",
        lambda group, paths: (
            deaths_seen.append([fragments.deaths(worker.db_dir, n) for n in names]) or compute(group, paths)
        ),
    )
    call(worker, photos(4), names)
    assert deaths_seen == [[1, 1, 0, 0], [0, 0, 1, 1]]


def test_a_gpus_actor_call_holds_several_encoder_groups():
    options = IndexOptions(preset="tiny", masker="sam", masker_options={"encoder_batch": 4})
    assert distributed.photos_per_call(options, gpus=1) == 4 * distributed.GROUPS_PER_CALL > 4
    assert distributed.photos_per_call(options, gpus=0) == 4  # a CPU's call: one group, as before


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_gpu_actor_takes_photos_decoded_by_cpu_tasks_apart_a_cpu_actor_decodes_them_itself(
    ray_local, device, tmp_path, monkeypatch, capsys
):
    """Ray fuses a map into the actor pool after it where their resources agree: a CPU
    actor decodes its photos itself (a codec's crash is its death, counted as one), a
    GPU actor is handed them decoded by CPU tasks, so the card waits for no decoding.
    Read from the pipeline's optimised plan (the cluster told it has a GPU: nothing runs)."""
    monkeypatch.setattr(ray_local, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    options = IndexOptions(preset="tiny", masker="sam", device=device, masker_options=SAM)
    todo = [{"fs_path": b"a.png", "path": "a.png", "sha256": "a", "file_stat": ""}]
    distributed.decoded_and_computed(todo, tmp_path, options, workers=1).explain()
    optimised = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    operators = [line.strip(" +-") for line in optimised.splitlines() if line.strip(" +-")]
    if device == "cuda":
        assert operators[:2] == [
            "ActorPoolMapOperator[MapBatches(SegmentWorker)]",
            "TaskPoolMapOperator[MapBatches(decode_files)]",
        ], optimised
    else:
        assert operators[0] == "ActorPoolMapOperator[MapBatches(decode_files)->MapBatches(SegmentWorker)]", optimised
