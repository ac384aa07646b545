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
