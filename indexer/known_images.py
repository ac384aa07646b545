"""The catalog's records of the paths a run is about to meet, read ahead in batches:
a re-run over indexed photos asked the catalog once a photo (0.7 ms: 12 min at 10^6),
and read and hashed every byte to learn that nothing changed (hours over 3 TB). Only
the run's writer changes a path's record, and only when it reaches that path, so a
record read ahead is still the catalog's when ``Writer.skip`` takes it (a photo's
record moved to a new path is forgotten at its old one: ``Writer._move``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from sqlalchemy import select

from usesearch.errors import UsesearchError
from usesearch.io.files import decode, indexed_limits, pixels_refused, read_bytes, stat_signature

from .records import DONE, FAILED, CopyRecord, ImageRecord
from .store import Store

T = TypeVar("T")

BATCH = 500  # paths looked up per query (SQLite allows 32,766 parameters)
RACY_NS = 3_000_000_000  # a file changed this recently is read again next run (git's "racily clean")


def file_stat(fs_path: str | bytes) -> str | None:
    """What a re-run compares to skip a file unread: size, modification and change
    times, inode (a copy with ``cp -p`` or ``rsync -t`` keeps the mtime, never the
    ctime). None where it cannot be had: the read says why."""
    try:
        st = os.stat(fs_path)
    except OSError:
        return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        return None  # changed just now: a write in the same tick (2 s on FAT) would keep this stat
    return stat_signature(st)


class KnownImages:
    def __init__(self, store: Store):
        self.store = store
        self._records: dict[bytes, ImageRecord | None] = {}  # by path; None: not in the catalog
        self._copies: dict[bytes, CopyRecord] = {}  # by path: copies noted, of the paths with no record
        self._stats: list[dict] = []  # stats to record (``note_stat``), a batch a transaction
        self._copy_stats: dict[bytes, dict] = {}  # copies to note (``note_copy``), by path

    def prefetch(self, keys: Sequence[bytes]) -> None:
        """The records of these paths, ``BATCH`` a query."""
        self.flush()
        wanted = [key for key in dict.fromkeys(keys) if key not in self._records]

        def read(part: list[bytes]) -> dict[bytes, ImageRecord | None]:
            found: dict[bytes, ImageRecord | None] = dict.fromkeys(part)
            with self.store.sessions() as s:
                found.update(
                    (r.fs_path, r) for r in s.scalars(select(ImageRecord).where(ImageRecord.fs_path.in_(part)))
                )
                unknown = [key for key, record in found.items() if record is None]
                if unknown:
                    query = select(CopyRecord).where(CopyRecord.fs_path.in_(unknown))
                    self._copies.update((c.fs_path, c) for c in s.scalars(query))
            return found

        for start in range(0, len(wanted), BATCH):
            self._records.update(self.store.retrying(lambda: read(wanted[start : start + BATCH])))

    def prefetching(self, items: Sequence[T], key: Callable[[T], bytes | None]) -> Iterator[T]:
        """The items in order, the records of each next ``BATCH`` of their paths (``key``;
        None: no path to ask for) read in one query before the first of them goes on."""
        for at, item in enumerate(items):
            if at % BATCH == 0:
                self.prefetch([k for k in map(key, items[at : at + BATCH]) if k is not None])
            yield item

    def note_stat(self, image_id: int, sha256: str, file_stat: str) -> None:
        """A file read whole and found as recorded: its stat, so that the next run skips
        it unread (an index from before stats were kept: once for every photo, so a
        transaction a batch, not a photo). Lost with a kill: it is only a shortcut."""
        self._stats.append({"row": image_id, "content": sha256, "stat": file_stat})
        if len(self._stats) >= BATCH:
            self.flush()

    def read_as_recorded(self, existing: ImageRecord | None, sha256: str, file_stat: str | None) -> None:
        """A file read whole found to hold the content indexed for it: a failure noted on
        it (a damaged file, since repaired) is over, and its stat, taken before the read,
        is noted for the next run to skip it unread."""
        if existing is None or existing.status != DONE or existing.sha256 != sha256:
            return
        if existing.error_class is not None:
            self.store.clear_failure(existing.id)
        if file_stat is not None and existing.file_stat != file_stat:
            self.note_stat(existing.id, sha256, file_stat)

    def drop_copy(self, key: bytes) -> None:
        """A copy noted this run that is not one after all (``Writer.fail``)."""
        if self._copy_stats.pop(key, None) is None:
            self.store.forget_copies([key])  # flushed already, or noted by an earlier run

    def note_copy(self, key: bytes, sha256: str, file_stat: str) -> None:
        """A copy met (read whole, its content indexed under another path): its stat, so
        that the next run skips it unread. Lost with a kill: it is only a shortcut."""
        self._copy_stats[key] = {"fs_path": key, "sha256": sha256, "file_stat": file_stat}
        if len(self._copy_stats) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._stats:
            rows, self._stats = self._stats, []
            self.store.set_file_stats(rows)
        if self._copy_stats:
            copies, self._copy_stats = list(self._copy_stats.values()), {}
            self.store.set_copy_stats(copies)

    def take(self, key: bytes) -> ImageRecord | None:
        """The catalog's record of this path: the one read ahead, forgotten here (the
        caller may change it), or, not read ahead, asked for now."""
        return self._records.pop(key) if key in self._records else self.store.image_by_path(key)

    def forget(self, key: bytes) -> None:
        """Drop the record read ahead for this path (it will be asked for again)."""
        self._records.pop(key, None)

    def unchanged(
        self,
        key: bytes,
        fs_path: str,
        proposals: bool = True,
        failed_too: bool = False,
        copies_too: bool = False,
        max_pixels: int | None = None,
    ) -> tuple[str | None, str | None]:
        """(the file's stat now, taken before any read of it; the recorded SHA-256 where
        that stat is the one recorded when it was last read whole and the photo is
        indexed with nothing left to do, no failure noted, its proposals made (where
        ``proposals``: a masker's run; a labelled dataset's needs none), or, where
        ``failed_too`` (a run not retrying failures), it failed after its read (unless
        refused for pixels that ``max_pixels`` now lets in), or, where
        ``copies_too``, it is a copy noted with that stat (the caller reads it after all
        where ``Writer.skip`` then finds no photo it copies): skipped without a read;
        else None: read and hash it). Called from reader threads: a stat and a
        dictionary read, no catalog access."""
        stat = file_stat(fs_path)
        known = self._records.get(key)
        copy = self._copies.get(key) if known is None and copies_too else None
        if stat is not None and copy is not None and copy.file_stat == stat:
            return stat, copy.sha256
        if stat is None or known is None or known.file_stat != stat:
            return stat, None
        if known.status == FAILED:
            return stat, known.sha256 if failed_too and not fits_now(known, max_pixels) else None
        if known.status != DONE or (proposals and not known.proposals_made) or known.error_class is not None:
            return stat, None
        return stat, known.sha256


def record_limits(record: ImageRecord) -> tuple[int, int]:
    """``indexed_limits`` for a photo's record: its pixels, and its file's size when last
    read whole (the first field of ``file_stat``) where recorded."""
    size = record.file_stat.split(":", 1)[0] if record.file_stat else ""
    return indexed_limits(record.width, record.height, int(size) if size.isdigit() else None)


def fits_now(record: ImageRecord, max_pixels: int | None) -> bool:
    """Whether ``record`` failed for its pixels and ``max_pixels`` now lets them in (a
    run with `index --max-pixels` raised): tried again without --retry-failed."""
    pixels = pixels_refused(record.error_message)
    return pixels is not None and max_pixels is not None and pixels <= max_pixels


def still_holds(record: ImageRecord) -> bool:
    """Whether the file of an indexed photo still holds the content recorded for it: its
    stat as recorded, else its bytes hashed again. A file met under a new path with that
    content is a copy only if so; else it was renamed and another file took the old name
    (the record follows it; the old name, when met, is indexed as new), not a copy left
    unindexed while the old name's new content replaced the record. A file that cannot
    be read counts as holding it, as before: its own read says why; so does one whose
    bytes no longer decode (truncated: a copy in progress). Its read fails and keeps its
    segments, labels with them, and a copy elsewhere stays a copy: the record moved onto
    the copy, and the repaired photo was embedded a second time."""
    try:
        if record.file_stat is not None and stat_signature(os.stat(record.fs_path)) == record.file_stat:
            return True
        max_bytes, max_pixels = record_limits(record)
        data, sha256 = read_bytes(record.fs_path, max_bytes)
        if sha256 == record.sha256:
            return True
        decode(data, record.path, max_pixels)  # no longer decoding: it holds (below). Rare: worth one decode
        return False
    except FileNotFoundError:
        return False
    except (OSError, UsesearchError):
        return True
