"""Ctrl-C that is never lost. Python raises ``KeyboardInterrupt`` wherever the main
thread is when SIGINT arrives; inside a finalizer or a garbage-collection callback
(SQLAlchemy's event registry has one) it is printed as "Exception ignored" and
dropped, and an index run interrupted in its first seconds went on to its end and
exited 0. A command counts each SIGINT (``counting``, which the CLI wraps every
command in), and the loops that run for long ask ``raise_if_lost`` at each step.
Outside ``counting`` (the Python API, a handler someone else installed) nothing
changes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_received = 0  # SIGINTs since the command began
_acted_on = 0  # ... of which a KeyboardInterrupt was seen to be handled
_counting = False  # within ``counting``, on the main thread: else ``raise_if_lost`` never raises


def _on_sigint(signum, frame) -> None:
    global _received
    _received += 1
    raise KeyboardInterrupt


@contextmanager
def counting() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt``, as Python's own handler does, and is counted."""
    global _received, _acted_on, _counting
    ours = threading.current_thread() is threading.main_thread()
    if not ours or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # not ours to change
        return
    _received = _acted_on = 0
    _counting = True
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _received = _acted_on = 0  # a command's Ctrl-C is over with it
        _counting = False


def handled() -> None:
    """A ``KeyboardInterrupt`` reached its handler: the SIGINTs so far are acted on."""
    global _acted_on
    _acted_on = _received


def raise_if_lost() -> None:
    """Raise the ``KeyboardInterrupt`` of a SIGINT that arrived but never reached a handler."""
    global _acted_on
    if _counting and _received > _acted_on and threading.current_thread() is threading.main_thread():
        _acted_on = _received
        raise KeyboardInterrupt
