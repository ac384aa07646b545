"""What a Ray worker hands the single committer (``distributed.py``, ``coco_ray.py``):
a fragment file per computed image in the index folder (its segments, RLE masks and
float16 embeddings, written atomically under the image's content hash, so a retried
task rewrites the same file), a note per attempt that counts the actors a photo
killed, and a failure as text."""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from usesearch.errors import WorkerError, first_line
from usesearch.io.atomic import write_atomic

log = logging.getLogger(__name__)
FRAGMENTS = "fragments"  # in the index folder: computed images waiting for their commit
# A photo whose computing killed its actor this many times (a native crash, memory
# exhausted) is recorded as failed: Ray would otherwise restart the actor and retry it
# forever, and nothing after it would ever be committed.
MAX_WORKER_DEATHS = 2


def fragment_path(db_dir: str | os.PathLike, sha256: str) -> Path:
    return Path(db_dir) / FRAGMENTS / f"{sha256}.npz"


def write_fragment(path: Path, hw, segments: list[dict], embeddings: np.ndarray, **extra) -> None:
    """Atomically (a temporary name, fsync, rename): a reader sees all of it or none.
    ``extra``: more of what the worker found, as JSON (``read_fragment``'s last value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    meta = {**extra, "hw": list(hw), "segments": segments}
    np.savez(
        buffer,
        embeddings=np.asarray(embeddings, np.float16).reshape(len(segments), -1)
        if len(segments)
        else np.zeros((0, 0), np.float16),  # none: a photo whose annotations were all refused
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
    )
    write_atomic(path, buffer.getvalue())  # a full disk leaves nothing half-written behind


def read_fragment(path: Path) -> tuple[tuple[int, int], list[dict], np.ndarray, dict]:
    """(size, segment rows, embeddings, the rest of what the worker wrote)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(data["meta"].tobytes())
        hw, segments = tuple(meta.pop("hw")), meta.pop("segments")
        return hw, segments, data["embeddings"].astype(np.float32), meta


def usable_leftover(path: Path) -> bool:
    """Whether a fragment a killed run left can be committed: present and readable. One
    damaged (a disk's fault, a bad copy of the folder) is deleted, said, and its photo
    computed again: read at commit, it failed every later run in zipfile's words."""
    if not path.is_file():
        return False
    try:
        read_fragment(path)
        return True
    except Exception as exc:  # noqa: BLE001 - any damage (a cut zip, a member missing, bad JSON): computed again
        log.warning(
            "a fragment left by a run cut short cannot be read (%s): %s; its photo is computed again",
            first_line(exc),
            path.name,
        )
        path.unlink(missing_ok=True)
        return False


def drop_committed(db_dir: str | os.PathLike, committed: Callable[[str], bool]) -> int:
    """At a run's start, before its actors: delete the fragments of photos the catalog
    holds already (``committed(sha256)``), and the temporary files of fragments whose
    writer was killed mid-write; how many. An actor of a killed driver lives on a while,
    and one that finishes a photo after the next run committed it leaves a fragment
    where no run would look again."""
    dropped = 0
    folder = Path(db_dir) / FRAGMENTS
    for path in folder.glob("*.npz"):
        if len(path.stem) == 64 and committed(path.stem):  # a masker run's (``coco-*``: coco_ray's own)
            path.unlink(missing_ok=True)
            dropped += 1
    for path in folder.glob(".*.npz.*.tmp"):  # ``write_atomic``'s, of a process killed before its rename
        if len(path.name.split(".")[1]) == 64:
            path.unlink(missing_ok=True)
            dropped += 1
    return dropped


def left_over(db_dir: str | os.PathLike) -> int:
    """Bytes of the fragments folder's files: those of Ray runs cut short (a finished run
    leaves none of the photos it committed), and of photos since deleted or changed."""
    folder = Path(db_dir) / FRAGMENTS
    if not folder.is_dir():
        return 0
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                total += entry.stat().st_size if entry.is_file() else 0
            except FileNotFoundError:  # committed meanwhile (a dry run holds no lock: a run may go on)
                continue
    return total


def waiting(db_dir: str | os.PathLike) -> int:
    """Photos computed by a Ray run and not committed (a run cut short): their fragments."""
    folder = Path(db_dir) / FRAGMENTS
    return sum(1 for path in folder.glob("*.npz")) if folder.is_dir() else 0


def remove_all(db_dir: str | os.PathLike) -> int:
    """``prune``'s, holding the writer's lock (no run is committing): every fragment and
    note goes; a photo whose run was cut short is computed again by the next. Bytes freed."""
    freed = 0
    folder = Path(db_dir) / FRAGMENTS
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.is_file():
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
    return freed


def forget_attempts(db_dir: str | os.PathLike) -> None:
    """At a run's start: a killed run's notes name actors that died with it, not of a photo."""
    for note in (Path(db_dir) / FRAGMENTS).glob("*.attempts"):
        note.unlink(missing_ok=True)


def attempts_path(db_dir: str | os.PathLike, sha256: str) -> Path:
    return Path(db_dir) / FRAGMENTS / f"{sha256}.attempts"


def deaths(db_dir: str | os.PathLike, sha256: str) -> int:
    """How many actors died computing this photo (a note of an attempt left behind is one that died)."""
    try:
        return int(attempts_path(db_dir, sha256).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def verdict(died: int, most: int = MAX_WORKER_DEATHS) -> str | None:
    """The failure recorded for a photo actors died on (``deaths``) ``most`` times; None before."""
    if died < most:
        return None
    times = "once" if died == 1 else f"{died} times"
    return f"WorkerDied: the Ray worker computing it died {times} (a crash, or out of memory)"


@contextmanager
def attempted(db_dir: str | os.PathLike, sha256: str) -> Iterator[None]:
    """A step that may kill its process (decoding a photo, embedding it), noted: where
    it does, the note counts one death more; lived through, the count is as before."""
    died = deaths(db_dir, sha256)
    attempt(db_dir, sha256)
    try:
        yield
    finally:
        if died:
            attempts_path(db_dir, sha256).write_text(str(died))
        else:
            attempts_path(db_dir, sha256).unlink(missing_ok=True)


def attempt(db_dir: str | os.PathLike, sha256: str) -> None:
    """Note that an actor starts computing this photo (removed once it lived through it)."""
    path = attempts_path(db_dir, sha256)
    died = deaths(db_dir, sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(died + 1))  # no fsync: per photo on a shared disk, and a torn note only reads as 0


def worker_error(text: str) -> WorkerError:
    """The failure a worker reported, recorded under its original class name (as the
    sequential indexer records it). A file error of Python's own is one of its class too
    (a ``FileNotFoundError``: the file gone since the walk, said and not recorded, as
    the sequential indexer does)."""
    name, _, message = text.partition(": ")
    builtin = getattr(builtins, name, None)
    file_error = (builtin,) if isinstance(builtin, type) and issubclass(builtin, OSError) else ()
    return type(name if name.isidentifier() else "WorkerError", (WorkerError, *file_error), {})(message)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc) if str(exc).strip() else ''}"
