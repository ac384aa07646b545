"""Work started ahead in a thread (on a GPU, on a CUDA stream) of its own
(``usesearch/side_stream.py``): SAM's encoder a group ahead, the backbones beside SAM.
The hand-over on the card is checked by the prepared GPU check; here, on the CPU, what
is handed over, to whom, and what a failure leaves."""

import threading
import time

import numpy as np
import pytest
import torch

from tests.helpers import LOW, blob_sam, wrapped_out_of_memory
from usesearch.masks.amg import SamMaskGenerator
from usesearch.side_stream import SideStream, release_work_aside


def side(keep: int = 2) -> SideStream:
    stream: SideStream = SideStream(torch.device("cpu"), "usesearch-test", {}, "test", keep=keep)
    stream.on = True  # a GPU's default
    for size in (1, 2):
        stream.ran_in_line(photos(size))
    return stream


def photos(n: int) -> list[np.ndarray]:
    return [np.full((4, 4, 3), i, np.uint8) for i in range(n)]


def test_the_result_goes_to_the_very_photos_it_was_started_on_once():
    stream, group = side(), photos(2)
    stream.start(group, lambda given: (threading.current_thread().name, [int(p[0, 0, 0]) for p in given]))
    assert stream.group_of(group[1]) == group and stream.group_of(group[1].copy()) is None  # found by any one
    assert not stream.take([p.copy() for p in group])  # equal photos, other objects: not theirs
    assert not stream.take(group[::-1])
    thread, values = stream.take(list(group))  # a new list of the same objects is the same group
    assert thread.startswith("usesearch-test") and values == [0, 1]
    assert stream.take(group) is None and stream.group_of(group[0]) is None  # taken once
    assert stream.clock["test"] > 0


def test_only_the_latest_groups_are_kept_untaken():
    stream, groups = side(keep=2), [photos(1) for _ in range(3)]
    for n, group in enumerate(groups):
        stream.start(group, lambda _, n=n: n)
    assert stream.take(groups[0]) is None  # a group that failed before it was taken: dropped with the oldest
    assert [stream.take(g) for g in groups[1:]] == [1, 2]


@pytest.mark.parametrize("out_of_memory", [True, False], ids=["out of memory", "another error"])
def test_a_failure_is_left_to_the_callers_own_call(out_of_memory):
    stream, group, other = side(), photos(1), photos(1)
    error = torch.cuda.OutOfMemoryError("CUDA out of memory") if out_of_memory else RuntimeError("refused")
    stream.start(group, lambda _: (_ for _ in ()).throw(error))
    stream.start(other, lambda _: "other's")
    assert stream.take(group) is None
    assert stream.on is not out_of_memory  # its memory beside the caller's was too much: off for good
    assert stream.take(other) == (None if out_of_memory else "other's")


def test_work_that_keeps_failing_aside_turns_it_off_once_in_a_row(caplog):
    """A failure of the side thread's own (not the photos': those fail in line too) left
    every group computed twice for the rest of the run, silently."""
    from usesearch.side_stream import FAILURES_IN_A_ROW

    stream = side()
    fail = lambda _: (_ for _ in ()).throw(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED\nwhen calling cublasCreate"))  # noqa: E731
    for _ in range(FAILURES_IN_A_ROW - 1):  # failures broken by a success: counted afresh
        group = photos(1)
        stream.start(group, fail)
        assert stream.take(group) is None
        stream.ran_in_line(group)  # (the caller's own call of the group succeeded)
    group = photos(1)
    stream.start(group, len)
    assert stream.take(group) == 1
    for _ in range(FAILURES_IN_A_ROW + 2):  # the photos' own failures (in line too) are not counted
        group = photos(1)
        stream.start(group, fail)
        assert stream.take(group) is None
    for _ in range(FAILURES_IN_A_ROW):
        assert stream.on  # (still on before the last)
        group = photos(1)
        stream.start(group, fail)
        assert stream.take(group) is None
        stream.ran_in_line(group)
    assert not stream.on
    said = f"{FAILURES_IN_A_ROW} groups in a row failed aside and not in line (the last: CUBLAS_STATUS_ALLOC_FAILED)"
    assert said in caplog.text


def test_a_group_size_starts_aside_only_once_the_caller_ran_it_in_line():
    """The first group of each size compiles the models in the caller's thread:
    torch.compile is not made to compile in two threads at once."""
    stream, three = side(), photos(3)
    stream.start(three, len)
    assert not stream.started(three) and stream.take(three) is None
    stream.ran_in_line(photos(3))  # (any photos of that size)
    stream.start(three, len)
    assert stream.started(three) and stream.take(three) == 3


def test_out_of_memory_wrapped_by_the_compiler_turns_it_off_and_close_ends_its_thread():
    stream, group, later = side(), photos(1), photos(2)
    release, wrapped = threading.Event(), wrapped_out_of_memory()
    stream.start(group, lambda _: release.wait() and (_ for _ in ()).throw(wrapped))
    stream.start(later, lambda _: "later")  # queued behind the first
    release.set()
    assert stream.take(group) is None and not stream.on and not stream.started(later)
    stream.close()
    assert stream._thread is None


def test_release_stops_every_stream_in_use_and_waits_for_its_work():
    """Out of the card's memory anywhere: every side stream in use (whichever model
    made it) is stopped for good, and its work under way finished, so the memory it
    holds is back before the caller tries again; none in use: nothing to give back."""
    release_work_aside()  # (streams earlier tests in this process left on)
    busy, idle, unused, group = side(), side(), side(), photos(1)
    finished = threading.Event()
    busy.start(group, lambda _: time.sleep(0.3) or finished.set())
    idle.start(photos(1), len)
    assert idle.take(idle._kept[next(iter(idle._kept))][0]) == 1  # done and taken: in use still
    assert unused.on and not unused.in_use()
    assert release_work_aside()
    assert finished.is_set() and busy._thread is None  # waited for, not left running
    assert not busy.on and not idle.on and unused.on  # the unused one holds nothing
    assert busy.take(group) is None
    assert not release_work_aside()


def test_out_of_memory_aside_waits_for_the_next_groups_work_under_way(caplog):
    """A group's work aside ran out of memory and the side thread went straight on to
    the next group: taking the failure waits for that work (its memory back before the
    caller's call in line), rather than only turning the stream off; said once (a run's
    figures change from there on, and nothing said why)."""
    stream, group, following = side(), photos(1), photos(1)
    running, finished = threading.Event(), threading.Event()

    def next_group(_):
        running.set()
        time.sleep(0.3)
        finished.set()
        return "held"

    stream.start(group, lambda _: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory")))
    stream.start(following, next_group)
    running.wait()
    with caplog.at_level("WARNING"):
        assert stream.take(group) is None
        stream.release()  # (again: nothing more said)
    assert finished.is_set() and not stream.on and not stream.in_use()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and f"no more {stream.key} for the rest of the run" in said[0], said


class _SlowList(list):
    """Photos whose listing takes a while: ``start`` is caught between its checks."""

    def __iter__(self):
        time.sleep(0.3)
        return super().__iter__()


def test_a_release_while_the_indexing_thread_starts_work_neither_raises_nor_restarts_it():
    """The indexing thread starts a group aside (``encode_ahead``) while the model thread,
    out of memory, releases the stream: the start finds it stopped and starts nothing;
    it raised "cannot schedule new futures after shutdown" before, ending the run."""
    stream = side()
    busy = threading.Event()
    stream.start(photos(2), lambda _: busy.set() or time.sleep(0.5))
    busy.wait()
    raised: list[BaseException] = []

    def indexing():
        try:
            stream.start(_SlowList(photos(2)), len)
        except BaseException as exc:  # noqa: BLE001 - what the test looks for
            raised.append(exc)

    thread = threading.Thread(target=indexing)
    thread.start()
    time.sleep(0.1)
    assert release_work_aside()
    thread.join()
    assert raised == [] and not stream.on and stream._thread is None and not stream._kept


def test_off_it_starts_nothing():
    stream, group, ran = side(), photos(1), []
    stream.on = False
    stream.start(group, ran.append)
    assert stream.take(group) is None and not ran
    assert not SideStream(torch.device("cpu"), "x", {}, "x").on  # a CPU's default


@pytest.fixture(scope="module")
def generator():
    return SamMaskGenerator(blob_sam(), points_per_side=6, encoder_batch=2, **LOW)


def test_sams_encoder_a_group_ahead_gives_the_masks_of_in_line(generator, monkeypatch):
    """``encode_ahead`` (the indexer's model stage calls it as it queues a group)
    encodes in the generator's own thread; the masks equal those encoded in line."""
    from skimage import data

    group = [np.ascontiguousarray(data.coffee()[::4, ::4]), np.ascontiguousarray(data.astronaut()[::4, ::4])]
    in_line = generator.generate_batch(group)
    encoded_in = []
    real = generator._encode
    monkeypatch.setattr(generator, "_encode", lambda *a: encoded_in.append(threading.current_thread().name) or real(*a))
    monkeypatch.setattr(generator.ahead, "on", True)
    generator.encode_ahead(group)
    ahead = generator.generate_batch(group)
    assert len(encoded_in) == 1 and encoded_in[0].startswith("usesearch-encoder")  # one call, 2 photos a call
    assert [[r.rle["counts"] for r in photo] for photo in ahead] == [[r.rle["counts"] for r in p] for p in in_line]
    assert all(len(photo) > 0 for photo in ahead)
    assert generator.seconds["encoder ahead"] > 0


def test_a_photo_whose_encoding_ahead_failed_meets_its_error_in_line(generator, monkeypatch):
    """NaN features from the encoder ahead: the photo's own in-line call raises the
    error, once, as that photo's (the indexer records it)."""
    from usesearch.errors import ModelOutputError

    group = [np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))]
    generator.ahead.ran_in_line(group)
    calls = []
    nan = lambda pixels: calls.append(1) or torch.full((len(pixels), 256, 64, 64), float("nan"))  # noqa: E731
    monkeypatch.setattr(generator.model, "image_encoder", _Encoder(generator.model.image_encoder, nan))
    monkeypatch.setattr(generator.ahead, "on", True)
    generator.encode_ahead(group)
    with pytest.raises(ModelOutputError, match="SAM's image encoder gave"):
        generator.generate_batch(group)
    assert len(calls) == 2  # ahead, then in line


def test_the_decoder_out_of_memory_stops_the_encoder_ahead_before_it_halves_its_batch(monkeypatch):
    """The encoder's work ahead holds memory beside the decoder's: stopped first, the
    prompt batch kept; a second shortage is another process's, and halves the batch."""
    monkeypatch.setattr("usesearch.masks.amg.CPU_POINTS_PER_BATCH", 64)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    generator = SamMaskGenerator(blob_sam(), points_per_side=8, **LOW)
    photo = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    generator.ahead.on = True
    generator.ahead.ran_in_line([photo])
    generator.encode_ahead([photo])
    assert generator.ahead.in_use()
    real, sizes, shortages = generator._batch_candidates, [], iter([True, True])

    def short_of_memory(features, points, *args):
        sizes.append(len(points))
        if len(points) == 64 and next(shortages, False):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(features, points, *args)

    generator._batch_candidates = short_of_memory
    assert len(generator.generate_batch([photo])[0]) > 0
    assert sizes == [64, 64, 32, 32] and not generator.ahead.on


class _Encoder(torch.nn.Module):
    """SAM's image encoder, its output replaced (``img_size`` kept for the transform)."""

    def __init__(self, real: torch.nn.Module, forward):
        super().__init__()
        self.img_size, self._forward = real.img_size, forward

    def forward(self, pixels):
        return self._forward(pixels)


def test_the_decoder_out_of_memory_stops_the_backbones_beside_sam_too(monkeypatch):
    """The backbones beside SAM (the embedder's side stream) hold memory beside the
    decoder's as the encoder's work ahead does: an out-of-memory error in the decoder
    stops that work first, and the prompt batch is kept."""
    monkeypatch.setattr("usesearch.masks.amg.CPU_POINTS_PER_BATCH", 64)
    release_work_aside()
    generator = SamMaskGenerator(blob_sam(), points_per_side=8, **LOW)
    photo = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    beside = side()  # the embedder's, in use
    beside.start(photos(1), len)
    real, sizes, shortages = generator._batch_candidates, [], iter([True])

    def short_of_memory(features, points, *args):
        sizes.append(len(points))
        if next(shortages, False):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(features, points, *args)

    generator._batch_candidates = short_of_memory
    assert len(generator.generate_batch([photo])[0]) > 0
    assert sizes == [64, 64] and not beside.on


def test_a_result_handed_over_on_a_card_marks_only_its_cuda_tensors(monkeypatch):
    """``record_stream`` has no CPU kernel: a CPU tensor in a result (a crop box) would
    fail the group instead of being handed over. The card's hand-over faked on the CPU:
    the work's event waited for, each CUDA tensor marked for the taking stream."""
    stream, group = side(), photos(1)
    marked, waited = [], []

    class Taker:
        def wait_event(self, event):
            waited.append(event)

    class CudaTensor(torch.Tensor):  # a CPU tensor that says it is on the card
        is_cuda = True

        def record_stream(self, on):
            marked.append(on)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: taker)
    taker, on_card = Taker(), torch.zeros(2).as_subclass(CudaTensor)
    monkeypatch.setattr(stream, "_run", lambda run, given: (run(given), "event"))
    stream.start(group, lambda _: {"features": on_card, "boxes": [torch.tensor([0, 0, 4, 4])]})
    out = stream.take(group)
    assert out is not None and out["features"] is on_card
    assert waited == ["event"] and marked == [taker]
