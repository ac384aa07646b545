"""Ctrl-C and SIGTERM during training: the first lets the step being trained finish."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from usesearch import interrupts


class StopRequest(threading.Event):
    """Set by the first Ctrl-C or SIGTERM. A second stops at once, but not inside
    ``holding`` (a checkpoint being written: the step's head, the trainer's state and
    the latest-head copy): it is kept until that ends, so that what the run says it
    wrote is what is on disk. A third abandons the write (one stuck on a mount)."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False  # within ``holding``
        self.again = False  # a second request came while held

    @contextmanager
    def holding(self, last: bool = False) -> Iterator[None]:
        """``last``: the run's last checkpoint; a request kept through it does not turn
        the finished run into an interrupted one."""
        self.held = True
        try:
            yield
        finally:
            self.held = False
        if self.again and not last:  # (not after a failure of the write: its error is what is said)
            raise KeyboardInterrupt


@contextmanager
def stop_requests() -> Iterator[StopRequest | None]:
    """Set by the first Ctrl-C or SIGTERM: the loop stops between steps (a step cut
    mid-update leaves weights and optimizer apart); a second stops at once, once the
    checkpoint being written, if any, is whole."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    stop = StopRequest()

    def request(signum, frame) -> None:
        interrupts.note_signal(signum)  # a SIGTERM exits 143 as every command's does
        if stop.is_set() and stop.held and not stop.again:
            stop.again = True
            os.write(2, b"\nstopping once this checkpoint is written (Ctrl-C again abandons it)\n")
            return
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        os.write(2, b"\nstopping after this step, its checkpoint written (Ctrl-C again stops at once)\n")

    before = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
