"""Ctrl-C that is never lost. Python raises ``KeyboardInterrupt`` wherever the main
thread is when SIGINT arrives; inside a finalizer or a garbage-collection callback
(SQLAlchemy's event registry has one) it is printed as "Exception ignored" and
dropped, and an index run interrupted in its first seconds went on to its end and
exited 0. A command counts each SIGINT (``counting``, which the CLI wraps every
command in), and the loops that run for long ask ``raise_if_lost`` at each step.
Outside ``counting`` (the Python API, a handler someone else installed) nothing
changes. SIGTERM is taken as a Ctrl-C within ``counting`` (the process then exits 143).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_received = 0  # SIGINTs since the command began
_acted_on = 0  # ... of which a KeyboardInterrupt was seen to be handled
_counting = False  # within ``counting``, on the main thread: else ``raise_if_lost`` never raises
_terminated = False  # a SIGTERM was among them: the process exits 143, not 130 (``terminated``)
_term_taken = False  # ``counting`` took SIGTERM (it had Python's default)


def _on_sigint(signum, frame) -> None:
    global _received
    _received += 1
    note_signal(signum)
    raise KeyboardInterrupt


def take_sigterm_back() -> None:
    """Where ``counting`` took SIGTERM and a library then put in a handler of its own
    (``ray.init``'s exits at once with code 15: no summary of the work kept), take it back."""
    if _counting and _term_taken and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigint)


def note_signal(signum: int) -> None:
    """A handler of its own (training's stop between steps) received ``signum``: a
    SIGTERM still ends the command with 143 (``terminated``), not Ctrl-C's 130."""
    global _terminated
    _terminated = _terminated or signum == signal.SIGTERM


def terminated() -> bool:
    """Whether the last command was stopped by SIGTERM (``timeout``, ``docker stop``,
    systemd): handled as a Ctrl-C, its work kept and said, where it ended the process
    silently at exit 143."""
    return _terminated


@contextmanager
def counting() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt``, as Python's own handler does, and is counted;
    so does SIGTERM where nothing else handles it."""
    global _received, _acted_on, _counting, _terminated, _term_taken
    if threading.current_thread() is not threading.main_thread():
        yield  # not ours to change
        return
    # Each only where Python's default is in place (a background job of a script has
    # SIGINT ignored: its SIGTERM is still taken, as `timeout` and `docker stop` send).
    taken = [
        (sig, before)
        for sig, before in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
        if signal.getsignal(sig) is before
    ]
    if not taken:
        yield
        return
    _received = _acted_on = 0
    _counting, _terminated = True, False
    _term_taken = any(sig == signal.SIGTERM for sig, _ in taken)
    for sig, _ in taken:
        signal.signal(sig, _on_sigint)
    try:
        yield
    finally:
        for sig, before in taken:
            signal.signal(sig, before)
        _term_taken = False
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
