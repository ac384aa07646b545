"""Ctrl-C and SIGTERM during training: the first lets the step being trained finish."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from usesearch import interrupts


@contextmanager
def stop_requests() -> Iterator[threading.Event | None]:
    """Set by the first Ctrl-C or SIGTERM: the loop stops between steps (a step cut
    mid-update leaves weights and optimizer apart); a second stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    stop = threading.Event()

    def request(signum, frame) -> None:
        interrupts.note_signal(signum)  # a SIGTERM exits 143 as every command's does
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
