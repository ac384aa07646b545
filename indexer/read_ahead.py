"""Photos read, hashed and decoded by a pool of threads running ahead of the models.

On a GPU the models take tens of milliseconds a photo, as long as reading, hashing
and decoding a JPEG; done in line they would leave the card idle half the time.
PIL's decoders and hashlib release the GIL, so threads suffice. The catalog is asked
(skip) and failures are recorded in the calling thread only: the pool never touches
the store (it consults the records the caller read ahead, ``KnownImages.unchanged``: a file
whose stat is the one recorded when it was last read whole is not read again), and the
photos come out in walk order, as the sequential indexer commits.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from usesearch.io.files import Found, decode, read_bytes, refuse_own_picture

from .options import IndexOptions, IndexReport
from .writer import Writer

T = TypeVar("T")
R = TypeVar("R")
Read = tuple[Found, bytes, str, str | None]  # a file, its bytes, their SHA-256, its stat before the read


@dataclass
class Photo:
    found: Found
    sha256: str
    rgb: np.ndarray
    file_stat: str | None = None  # as read before its bytes (``file_stat``)


def workers_for(on_gpu: bool) -> int:
    """Reader threads: a GPU run wants photos as fast as several cores decode them;
    a CPU run's models use every core, so one reader thread just overlaps them."""
    if not on_gpu:
        return 1
    return max(2, min(8, (os.cpu_count() or 2) - 1))


def ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int
) -> Iterator[tuple[T, Future[tuple[R, float]]]]:
    """(item, future of ``fn(item)``) in the order of ``items``, at most ``ahead`` in
    flight. ``items`` is pulled in the caller's thread, so a generator may use the
    store while it chooses what to submit."""
    remaining = iter(items)
    pending: deque[tuple[T, Future[tuple[R, float]]]] = deque()

    def fill() -> None:
        while len(pending) < ahead:
            try:
                item = next(remaining)
            except StopIteration:
                return
            pending.append((item, pool.submit(_timed, fn, item)))

    fill()
    while pending:
        item, future = pending.popleft()
        fill()  # keep the pool busy while the caller waits on this one
        yield item, future


def _timed(fn: Callable[[T], R], item: T) -> tuple[R, float]:
    start = time.perf_counter()
    return fn(item), time.perf_counter() - start


def photos(
    files: list[Found], writer: Writer, options: IndexOptions, report: IndexReport, workers: int, ahead: int
) -> Iterator[tuple[str, Photo | None]]:
    """(path, photo) for each file in order: the photo to index, or None when it was
    skipped or its failure recorded (the path is for progress). A new path whose
    content is already indexed, or met earlier in this run, is skipped; a known path
    whose content changed is indexed again."""
    seen: set[str] = set()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="usesearch-read")
    try:
        yield from _photos(pool, files, writer, options, report, ahead, seen)
    finally:  # also on Ctrl-C: queued reads are dropped, not finished
        pool.shutdown(wait=True, cancel_futures=True)


def _photos(
    pool: ThreadPoolExecutor,
    files: list[Found],
    writer: Writer,
    options: IndexOptions,
    report: IndexReport,
    ahead: int,
    seen: set[str],
) -> Iterator[tuple[str, Photo | None]]:
    def read(found: Found) -> tuple[bytes | None, str, str | None]:
        """(bytes, SHA-256, stat before the read); no bytes where the file is as it was
        when last read whole (its recorded SHA-256 then)."""
        if found.error is not None:
            raise found.error
        stat, recorded = writer.known.unchanged(
            found.key,
            found.fs_path,
            failed_too=not options.retry_failed,
            copies_too=True,
            max_pixels=options.max_pixels,
        )
        if recorded is not None:
            return None, recorded, stat
        return (*read_bytes(found.fs_path, options.max_bytes, found.path), stat)

    def to_decode() -> Iterator[tuple[str, Read | None]]:
        prefetched = writer.known.prefetching(files, lambda f: f.key if f.error is None else None)
        for found, future in ordered_map(pool, read, prefetched, ahead):
            try:
                (data, sha256, stat), seconds = _wait(future, report)
                report.add_stage("read + hash (workers)", seconds)
            except Exception as exc:  # noqa: BLE001 - any per-image failure is recorded and the run goes on
                writer.fail(found.key, found.path, None, exc, report)
                yield found.path, None
                continue
            if writer.skip(found.key, sha256, coming=seen, path=found.path, file_stat=stat):
                report.skipped += 1
                yield found.path, None
                continue
            if data is None:  # a copy skipped unread by its stat, whose photo is no longer indexed: read it now
                try:
                    data, sha256 = read_bytes(found.fs_path, options.max_bytes, found.path)
                except Exception as exc:  # noqa: BLE001 - recorded as any read's failure
                    writer.fail(found.key, found.path, None, exc, report)
                    yield found.path, None
                    continue
            seen.add(sha256)
            yield found.path, (found, data, sha256, stat)

    def decode_one(entry: tuple[str, Read | None]) -> np.ndarray | None:
        """The photo's pixels; None where there is nothing to decode (skipped or failed)."""
        path, job = entry
        if job is None:
            return None
        refuse_own_picture(job[1], job[0].path)
        return decode(job[1], job[0].path, options.max_pixels)

    for (path, job), future in ordered_map(pool, decode_one, to_decode(), ahead):
        if job is None:
            yield path, None
            continue
        found, _, sha256, stat = job
        try:
            rgb, seconds = _wait(future, report)
            report.add_stage("decode (workers)", seconds)
        except Exception as exc:  # noqa: BLE001
            writer.fail(found.key, found.path, sha256, exc, report, file_stat=stat)
            yield path, None
            continue
        yield path, Photo(found, sha256, rgb, stat) if rgb is not None else None


def _wait(future: Future[tuple[T, float]], report: IndexReport) -> tuple[T, float]:
    """A worker's result; the time the loop waited for it is the read stage's cost to
    the models (zero while the pool keeps ahead)."""
    start = time.perf_counter()
    try:
        return future.result()
    finally:
        report.add_stage("waiting for photos", time.perf_counter() - start)
