"""One writer a folder: an index, a curated dataset, a training run. An OS lock (flock)
on a file in it, so it ends with its process however that dies; taken at once or
refused, never waited for. The file stays: a lock on a pathname that a release
removed could be taken twice."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


def _write_pid(fd: int) -> None:
    """The holder's pid in the lock file, for the message another writer gets."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


@contextmanager
def one_writer(lock_file: Path, refusal: Callable[[str], Exception]) -> Iterator[None]:
    """Hold ``lock_file`` for the block; when another process holds it, raise
    ``refusal(its pid)``."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(
        lock_file,
        mode=0o644,
        thread_local=False,  # a writer may be closed by another thread than opened it
        blocking=False,
        preserve_lock_file=True,
        on_acquired=_write_pid,
    )
    try:
        lock.acquire()
    except Timeout:
        with open(lock_file, "rb") as f:
            holder = f.read(64).decode(errors="replace").strip() or "?"
        raise refusal(holder) from None
    try:
        yield
    finally:
        lock.release()


def live_holder(lock_file: Path) -> str | None:
    """The pid of the process that holds, or last held, ``lock_file`` where it is still
    running (None: none, or it cannot tell). Read, never taken: taking it even for an
    instant, a reader would refuse a writer starting then. (A pid reused since by another
    Python program is taken for the holder: this serves only to say what is going on.)"""
    try:
        pid = int(lock_file.read_bytes()[:64].decode(errors="replace").strip())
    except (OSError, ValueError):
        return None
    if not 0 < pid < 2**31:  # (0 and below would signal a process group)
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process: it runs
        pass
    try:  # a pid reused since by another program (a container's pids are few): not the holder
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # (no /proc: not Linux; or gone meanwhile) taken as it is
        return str(pid)
    return str(pid) if b"python" in command or b"usesearch" in command else None
