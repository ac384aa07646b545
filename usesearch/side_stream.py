"""Work on a group of photos started before it is needed, in a thread of its own and,
on a GPU, on a CUDA stream of its own (``SideStream``): SAM's image encoder a group
ahead (``masks/amg.py``) and the backbones beside SAM (``models/ahead.py``).

Why: the model thread's host work between its kernels (read-backs, NMS, RLE) leaves
the card idle for a third of its clock (the H100 profile: SAM's kernels 108 ms of a
175 ms photo); a second stream's kernels run in those gaps instead of after them.

The hand-over, as torch's CUDA semantics ask: the side thread records an event on its
stream after queuing the work; the taking thread's current stream waits for that
event on the card (the host does not wait for the kernels, only for their launches),
and each tensor of the result is marked as used by that stream (``record_stream``),
so the caching allocator does not give its memory to the side stream's next work
while the taker still reads it. On a CPU the same thread runs without a stream (tests).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Generic, TypeVar

import torch

from usesearch.devices import out_of_memory_in
from usesearch.errors import first_line

log = logging.getLogger(__name__)

T = TypeVar("T")

# Groups in a row whose work aside failed otherwise than out of memory, and then ran in
# line (a failure of the photos' own fails there too, and is not counted), before the
# stream is turned off: a failure of the side thread's own (a compile there) doubled
# the models' time for the whole run.
FAILURES_IN_A_ROW = 3

# Every side stream made in this process: the card's memory is the process's, so an
# out-of-memory error met anywhere (SAM's decoder, the pooling) may be the work aside's
# doing, whichever model started it (``release_work_aside``).
_MADE: weakref.WeakSet[SideStream] = weakref.WeakSet()


def used_on(device: torch.device) -> bool:
    """Whether work goes on side streams by default: on a GPU, whose idle gaps it fills.
    A CPU's models already use every core, so two at once would only share them."""
    return device.type == "cuda"


def _tensors(value: Any):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


class SideStream(Generic[T]):
    """``start(photos, run)`` runs ``run(photos)`` in this object's thread (on its CUDA
    stream on a GPU); ``take(photos)``, given the very same photo objects, returns the
    result, usable on the caller's stream. ``clock[key]`` gets the thread's seconds.
    The ``keep`` latest groups are kept untaken (a group that failed before it was
    taken is dropped with the oldest).

    Work starts on a side thread only for a group size the caller has already run in
    line (``ran_in_line``): the first group of each size (a run's first, its smaller
    last) compiles the models in the caller's thread, as torch.compile is not made to
    compile in two threads at once (pytorch#118260); the side thread then runs
    compiled code only."""

    def __init__(self, device: torch.device, name: str, clock: dict[str, float], key: str, keep: int = 2):
        self.device, self.name, self.clock, self.key, self.keep = device, name, clock, key, keep
        self.on = used_on(device)
        clock.setdefault(key, 0.0)
        self._thread: ThreadPoolExecutor | None = None  # made on first use
        self._stream: torch.cuda.Stream | None = None
        self._kept: OrderedDict[tuple[int, ...], tuple[list, Future[tuple[T, Any]]]] = OrderedDict()
        self._sizes_run: set[int] = set()  # group sizes the caller ran in line (compiled there)
        self._failed_in_a_row = 0
        self._failed_aside = ""  # the last group's failure aside, until its call in line says whose it was
        # ``start`` runs in the indexing thread while the model thread takes, and an
        # out-of-memory error there stops and closes the stream: its state changes under this.
        self._lock = threading.Lock()
        _MADE.add(self)

    def ran_in_line(self, photos: list) -> None:
        """The caller computed these photos itself: later groups of their size may go aside;
        where their work aside had failed, the failure was the side thread's own."""
        self._sizes_run.add(len(photos))
        failure, self._failed_aside = self._failed_aside, ""
        if failure:
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= FAILURES_IN_A_ROW:
                self.stop(f"{FAILURES_IN_A_ROW} groups in a row failed aside and not in line (the last: {failure})")

    def starts(self, photos: list) -> bool:
        """Whether ``start(photos, ...)`` would run them aside now (a caller that must note
        what a side thread is about to compute notes it first)."""
        return self.on and len(photos) in self._sizes_run

    def start(self, photos: list, run: Callable[[list], T]) -> None:
        photos = list(photos)
        with self._lock:  # (stopped meanwhile: nothing starts, no thread is made again)
            if not self.starts(photos):
                return
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix=self.name)
            self._kept[tuple(map(id, photos))] = (photos, self._thread.submit(self._run, run, photos))
            while len(self._kept) > self.keep:
                self._kept.popitem(last=False)

    def group_of(self, photo) -> list | None:
        """The photos of the work started and not yet taken that holds this very photo
        object (the caller takes a group by any one of its photos); None if none."""
        for photos, _ in list(self._kept.values()):
            if any(photo is p for p in photos):
                return photos
        return None

    def started(self, photos: list) -> bool:
        """Whether work was started on these very photos and not yet taken."""
        entry = self._kept.get(tuple(map(id, photos)))
        return entry is not None and all(a is b for a, b in zip(entry[0], photos))

    def _run(self, run: Callable[[list], T], photos: list) -> tuple[T, Any]:
        start = time.perf_counter()
        try:
            cuda = self.device.type == "cuda"
            if cuda and self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._stream) if cuda else nullcontext():
                out = run(photos)
                return out, (self._stream.record_event() if self._stream is not None else None)
        finally:
            self.clock[self.key] += time.perf_counter() - start

    def take(self, photos: list) -> T | None:
        """The result of the work started on these very photos, usable on this thread's
        current stream; None where none was started or it failed (the caller's own
        call in line meets the failure again, as its error). Out of memory turns the
        side stream off for good (its memory beside the caller's was too much) and
        waits for the work under way (the next group's, already begun)."""
        # One pop, not a check then a pop: ``start`` runs in the indexing thread while
        # the model thread takes (an id is reused once its object is gone: the identity check).
        with self._lock:
            entry = self._kept.pop(tuple(map(id, photos)), None)
        if entry is None or not all(a is b for a, b in zip(entry[0], photos)):
            return None
        future, entry = entry[1], None
        short, failure = None, ""  # (whether a failure was out of memory; its first line)
        try:
            out, done = future.result()
        except Exception as exc:  # noqa: BLE001 - met again in line, as the photos' own error
            short, failure = out_of_memory_in(exc) is not None, first_line(exc)  # (the compiler wraps one)
        if short is not None:  # (past the handler, the future gone: their traceback held the work's tensors)
            del future
            if short:
                self.release()  # (its next group may be under way: waited for, its memory back)
                torch.cuda.empty_cache()
            else:
                self._failed_aside = failure or "an error"  # (counted once its call in line succeeds)
            return None
        self._failed_in_a_row, self._failed_aside = 0, ""
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)  # on the card: the host does not wait for the kernels
            for tensor in _tensors(out):
                if tensor.is_cuda:  # (a CPU tensor in a result has no stream: record_stream has no CPU kernel)
                    tensor.record_stream(current)
        return out

    def in_use(self) -> bool:
        """Whether work may be under way aside: its thread made and not closed (stopped
        or not: a stopped stream's work already under way still holds memory)."""
        return self._thread is not None

    def stop(self, why: str = "out of GPU memory with work beside the models") -> None:
        """Off for good (memory ran out: this work's beside the caller's was too much; or
        it kept failing aside), what it kept dropped."""
        with self._lock:
            was_on, self.on = self.on, False
        if was_on:  # (said once: the run's figures change from here on, and why should show)
            log.warning(
                "%s: no more %s for the rest of the run (that work runs in line: slower, less memory)", why, self.key
            )
        self.drop()

    def release(self) -> None:
        """``stop``, and the work under way waited for, so the memory it holds comes back
        (its result, never taken, is freed with it)."""
        self.stop()
        if not threading.current_thread().name.startswith(self.name):  # (its own thread cannot wait for itself)
            self.close()

    def drop(self) -> None:
        """Forget every result not yet taken (computed by a model since found wrong, or
        the run ends), work not yet begun cancelled."""
        with self._lock:
            dropped, self._kept = list(self._kept.values()), OrderedDict()
        for _, future in dropped:
            future.cancel()

    def close(self) -> None:
        """``drop``, and the thread ended once its work under way is done."""
        self.drop()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)


def release_work_aside() -> bool:
    """Where any side stream of this process is in use: each stopped for good and its
    work under way waited for, the allocator's cached blocks handed back, True (the
    caller that ran out of memory tries again without it). False where none was: the
    shortage is the caller's own (or another process's)."""
    in_use = [stream for stream in list(_MADE) if stream.in_use()]
    for stream in in_use:
        stream.release()
    if in_use and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return bool(in_use)
