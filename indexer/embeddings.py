"""Segment embeddings in append-only float16 files beside the database.

``embeddings/chunk-000000.f16``, ``chunk-000001.f16``, ...: raw float16 rows of the
index's dimension, at most ``CHUNK_ROWS`` rows a file. The database keeps, per
segment, which chunk and row hold its vector. Rows are appended and fsynced
*before* the database transaction that references them commits, so a committed
segment always points at a complete row; a kill in between leaves unreferenced
rows at the end of a chunk, which are never read (the next append starts after
them, on a row boundary). Readers memory-map the chunks.

float16 halves the bytes of float32 and keeps cosine scores of unit vectors to
about 1e-3, far below the gaps between ranked segments that matter; FAISS gets
float32 copies.

Each chunk has a sidecar ``chunk-000000.sum``: one CRC-32 per row (``row_sums``;
any burst of flipped bits up to 32 long is caught, and nearly every other damage),
written and fsynced with the rows. Reads verify the rows they read
(rebuilds, ``reindex``, re-scoring, ``similar``, compaction), so a damaged row is a
``DamagedRowsError`` naming its segments, never a silently wrong vector. Rows written
before checksums existed have none and are read unverified until ``reindex`` or
``index --repair`` gives them one (``backfill_sums``).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from usesearch.errors import DamagedRowsError, EmbeddingsLostError

from . import row_scores

CHUNK_ROWS = 1 << 20  # 1.5 GB per chunk at 768-d
FOLDER = "embeddings"
_NAME = re.compile(r"chunk-(\d{6})\.f16$")
_PAGE = mmap.PAGESIZE
_GAP_PAGES = 16  # wanted pages this close are asked for in one range (one call, a little more read)
_PROBES = 8  # wanted pages checked for residency before any advice (all cached: none is given)
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def row_sums(block: np.ndarray) -> np.ndarray:
    """One CRC-32 per float16 row: zlib's, ~1 us a 768-d row (a vectorised weighted
    sum in NumPy measured 6x slower; re-scoring 1,000 candidates pays ~1 ms)."""
    block = np.ascontiguousarray(block, np.float16)
    if not len(block):
        return np.zeros(0, np.uint32)
    raw, width = memoryview(block.data).cast("B"), block.shape[1] * 2
    return np.fromiter((zlib.crc32(raw[i * width : (i + 1) * width]) for i in range(len(block))), np.uint32, len(block))


class EmbeddingFiles:
    def __init__(
        self,
        folder: str | os.PathLike,
        dim: int,
        chunk_rows: int | None = None,
        flags: str = "--db DIR",
        before_change: Callable[[], None] | None = None,
    ):
        self.folder = Path(folder)
        # Called once, before the first row is written or chunk deleted (a writer's token:
        # ``identity.take_writer_token``).
        self._before_change = before_change
        self.flags = flags  # the index's, for the repair its errors suggest (``catalog.index_flags``)
        self.dim = dim
        self.row_bytes = 2 * dim
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self._maps: dict[int, np.ndarray] = {}  # plain views of read-only maps
        self._mmaps: dict[int, mmap.mmap] = {}  # the maps themselves, for read-ahead advice
        self.read_ahead = _LIBC is not None and hasattr(mmap, "MADV_WILLNEED")
        self._sums: dict[int, np.ndarray] = {}
        self._named: set[int] = set()  # chunks whose names this process made durable (the folder fsynced)

    def path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:06d}.f16"

    def sums_path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:06d}.sum"

    def chunks(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    # -- writing (one writer: the index's lock) ------------------------------------------
    def append(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write rows durably; returns (chunk, row) of each. Rows of one call may span
        two chunks."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float16)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected [N, {self.dim}] vectors, got {vectors.shape}")
        chunks, rows = np.empty(len(vectors), np.int64), np.empty(len(vectors), np.int64)
        if not len(vectors):
            return chunks, rows
        self._changing()
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = self.chunks()
        chunk = existing[-1] if existing else 0
        done, touched = 0, set()
        while done < len(vectors):
            touched.add(chunk)
            with open(self.path(chunk), "ab") as f:
                size = f.seek(0, os.SEEK_END)
                start = -(-size // self.row_bytes)  # a torn row from a kill is skipped, never reused
                if start >= self.chunk_rows:
                    chunk += 1
                    continue
                if start * self.row_bytes != size:
                    f.write(b"\0" * (start * self.row_bytes - size))
                take = min(len(vectors) - done, self.chunk_rows - start)
                f.write(vectors[done : done + take].tobytes())
                f.flush()
                os.fsync(f.fileno())
            self._write_sums(chunk, start, row_sums(vectors[done : done + take]))
            chunks[done : done + take] = chunk
            rows[done : done + take] = np.arange(start, start + take)
            done += take
            if done < len(vectors):
                chunk += 1
        if touched - self._named:  # once a chunk a process: a run killed before it left a name maybe not durable
            _fsync_dir(self.folder)  # (later appends to the same files need only their own fsync)
            self._named |= touched
        return chunks, rows

    def place(self, segments: list[dict], vectors: np.ndarray | None) -> list[dict]:
        """Write each segment's vector durably (``append``); the segments with where it lies."""
        if vectors is None:
            raise ValueError("segments come with their vectors")
        chunks, rows = self.append(vectors)
        return [{**seg, "vec_chunk": int(c), "vec_row": int(r)} for seg, c, r in zip(segments, chunks, rows)]

    def _write_sums(self, chunk: int, start: int, sums: np.ndarray) -> None:
        """The rows' checksums at their rows' places. Rows before ``start`` that have
        none (a chunk begun before checksums, or a torn row a kill left) get theirs
        first, from their bits as they are: a hole would read as a wrong checksum."""
        fd = os.open(self.sums_path(chunk), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            have = os.fstat(fd).st_size // 4
            if have < start:
                with open(self.path(chunk), "rb") as data:
                    for lo in range(have, start, 1 << 16):  # 96 MB at a time at 768-d
                        hi = min(start, lo + (1 << 16))
                        data.seek(lo * self.row_bytes)
                        older = np.frombuffer(data.read((hi - lo) * self.row_bytes), np.float16)
                        gap = row_sums(older.reshape(-1, self.dim)) if len(older) else np.zeros(0, np.uint32)
                        os.pwrite(fd, np.pad(gap, (0, hi - lo - len(gap))).astype("<u4").tobytes(), lo * 4)
            os.pwrite(fd, sums.astype("<u4").tobytes(), start * 4)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._sums.pop(chunk, None)

    # -- reading ----------------------------------------------------------------------------
    def rows_short_of(self, chunk: int, need_rows: int) -> tuple[int, str | None]:
        """The rows ``chunk``'s file holds, and why they are short of ``need_rows`` (the
        file gone or cut short), else None: from its size, no row read."""
        repair = (
            f"`usesearch index PATHS {self.flags} --repair` re-embeds the photos whose rows it held "
            "(or restore it from a backup)"
        )
        try:
            rows = self.path(chunk).stat().st_size // self.row_bytes
        except FileNotFoundError:
            return 0, f"{self.path(chunk)} is missing: {repair}"
        if rows < need_rows:
            return rows, f"{self.path(chunk)} holds {rows} rows; the database refers to row {need_rows - 1}: {repair}"
        return rows, None

    def _map(self, chunk: int, need_rows: int) -> np.ndarray:
        mapped = self._maps.get(chunk)
        if mapped is None or len(mapped) < need_rows:  # the file grew since it was mapped
            rows, lost = self.rows_short_of(chunk, need_rows)
            if lost:
                raise EmbeddingsLostError(lost)
            # Read-only (a private writable map would count every chunk against the memory
            # commit limit); a plain ndarray view: slicing a memmap subclass costs ~10 us a block.
            with open(self.path(chunk), "rb") as f:
                mm = mmap.mmap(f.fileno(), rows * self.row_bytes, access=mmap.ACCESS_READ)
            if self.read_ahead:  # no read-around per fault (read_ahead_kb, often MBs): _advise asks for the rows
                mm.madvise(mmap.MADV_RANDOM)
            mapped = np.ndarray((rows, self.dim), np.float16, buffer=mm)
            self._maps[chunk], self._mmaps[chunk] = mapped, mm
        return mapped

    def _changing(self) -> None:
        if self._before_change is not None:
            self._before_change()  # (raising, as a server down does: called again at the write's retry)
            self._before_change = None

    def release_removed(self) -> int:
        """Unmap the chunks deleted since they were mapped (by another process's
        ``compact``): a reader holding their maps kept their disk space in use. The
        mapping goes once no array read from it is left. Returns how many."""
        present = set(self.chunks())
        gone = [chunk for chunk in self._mmaps if chunk not in present]
        for chunk in gone:
            self._maps.pop(chunk, None)
            self._mmaps.pop(chunk, None)
            self._sums.pop(chunk, None)
        return len(gone)

    def let_go(self) -> None:
        """Drop this process's hold on the pages of the chunks read so far: they stay
        in the page cache (a later read finds them there) but leave its resident memory,
        which a pass that streams every row once would otherwise grow to the files' size."""
        if hasattr(mmap, "MADV_DONTNEED"):
            for mm in self._mmaps.values():
                mm.madvise(mmap.MADV_DONTNEED)

    def _advise(self, chunk: int, wanted: np.ndarray) -> None:
        """Ask the kernel for the pages of the (ascending) ``wanted`` rows all at once, so
        that a cold cache reads them in parallel rather than one page fault at a time;
        nearby pages go in one range. Where a sample of them is already cached (a warm
        cache) no advice is given: a call per range costs ~2 us even then."""
        first = wanted * self.row_bytes // _PAGE
        if self._cached(self._maps[chunk], first[np.linspace(0, len(first) - 1, _PROBES).astype(np.int64)]):
            return
        last = ((wanted + 1) * self.row_bytes - 1) // _PAGE
        starts = np.flatnonzero(np.concatenate(([True], first[1:] > last[:-1] + _GAP_PAGES)))
        ends = np.concatenate((starts[1:], [len(wanted)])) - 1
        mm = self._mmaps[chunk]
        for lo, hi in zip(first[starts].tolist(), last[ends].tolist()):
            mm.madvise(mmap.MADV_WILLNEED, lo * _PAGE, min((hi + 1) * _PAGE, len(mm)) - lo * _PAGE)

    def read(
        self, chunks: np.ndarray, rows: np.ndarray, dtype=np.float32, ids: np.ndarray | None = None, verify: bool = True
    ) -> np.ndarray:
        """[N, dim] rows of the given (chunk, row) pairs, contiguous, as ``dtype``
        (float16: the stored bits, as compaction copies them and a scan reads them),
        each checked against its checksum unless ``verify`` is off (``ids``: the
        segments they belong to, for the error)."""
        out = np.empty((len(rows), self.dim), dtype)
        for chunk, dest, at, block in self._blocks(chunks, rows):
            if verify:
                self._verify(chunk, at, block, dest, ids)
            out[dest] = block
        return out

    def scores(
        self, chunks: np.ndarray, rows: np.ndarray, query: np.ndarray, ids: np.ndarray | None = None
    ) -> np.ndarray:
        """float32 inner products of the given (verified) rows with ``query``, block by
        block: no float32 copy of all the rows is made. Through torch where a model run
        loaded it (it converts float16 several times faster than NumPy); else NumPy's:
        ``similar`` on a compressed index re-scores a few thousand rows, and importing
        torch for them took 2 s and 600 MB."""
        q = np.ascontiguousarray(query, np.float32)
        product = row_scores.product_in_use()
        out = np.empty(len(rows), np.float32)
        for chunk, dest, at, block in self._blocks(chunks, rows):
            self._verify(chunk, at, block, dest, ids)
            out[dest] = product(block, q)
        return out

    def damaged(self, chunks: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """bool per (chunk, row): its bits no longer match its checksum, or its chunk
        file is gone or cut short of it (``--repair`` embeds such rows again too)."""
        chunks, rows = np.asarray(chunks, np.int64), np.asarray(rows, np.int64)
        present, wanted = set(self.chunks()), np.unique(chunks).tolist()
        length = np.zeros(max(wanted, default=-1) + 1, np.int64)  # rows each chunk file holds (0: gone)
        for chunk in wanted:
            length[chunk] = self.rows_in(chunk) if chunk in present else 0
        bad = rows >= length[chunks]
        whole = np.flatnonzero(~bad)
        for chunk, dest, at, block in self._blocks(chunks[whole], rows[whole]):
            bad[whole[dest]] = self._mismatch(chunk, at, block)
        return bad

    def _verify(self, chunk: int, at: np.ndarray, block: np.ndarray, dest, ids: np.ndarray | None) -> None:
        bad = self._mismatch(chunk, at, block)
        if bad.any():
            raise DamagedRowsError(self.path(chunk), at[bad], None if ids is None else ids[dest][bad], self.flags)

    def _mismatch(self, chunk: int, at: np.ndarray, block: np.ndarray) -> np.ndarray:
        sums = self._sums.get(chunk)
        if sums is None or at.max() >= len(sums):  # new rows (or their first checksums) since it was read
            path = self.sums_path(chunk)
            sums = np.fromfile(path, "<u4") if path.is_file() else np.zeros(0, np.uint32)
            self._sums[chunk] = sums
        known = at < len(sums)  # rows written before checksums have none
        bad = np.zeros(len(at), bool)
        if known.any():
            bad[known] = row_sums(block[known]) != sums[at[known]]
        return bad

    @staticmethod
    def _cached(mapped: np.ndarray, pages: np.ndarray) -> bool:
        """Whether every one of these pages of a map is in the page cache (mincore)."""
        assert _LIBC is not None
        base, vec = mapped.ctypes.data, ctypes.c_ubyte()
        for page in np.unique(pages).tolist():
            if _LIBC.mincore(ctypes.c_void_p(base + page * _PAGE), ctypes.c_size_t(_PAGE), ctypes.byref(vec)) != 0:
                return False  # not answered: advise
            if not vec.value & 1:
                return False
        return True

    def _blocks(self, chunks: np.ndarray, rows: np.ndarray, most: int = 4096):
        """(destination positions, float16 rows) covering the request: slices of the
        memory map where rows run on (an image's segments), copies elsewhere."""
        chunks, rows = np.asarray(chunks, np.int64), np.asarray(rows, np.int64)
        for chunk in np.unique(chunks).tolist():
            pick = chunks == chunk
            mapped = self._map(chunk, int(rows[pick].max()) + 1)
            order = np.argsort(rows[pick], kind="stable")  # ascending rows: sequential reads on a cold cache
            wanted, dest = rows[pick][order], np.flatnonzero(pick)[order]
            if self.read_ahead:
                self._advise(chunk, wanted)
            breaks = np.flatnonzero((np.diff(wanted) != 1) | (np.diff(dest) != 1)) + 1
            if len(breaks) * 16 < len(wanted):  # long runs: slices, not row copies
                for a, b in zip(np.concatenate(([0], breaks)), np.concatenate((breaks, [len(wanted)]))):
                    for lo in range(a, b, most):
                        hi = min(b, lo + most)
                        yield (
                            chunk,
                            slice(dest[lo], dest[lo] + hi - lo),
                            wanted[lo:hi],
                            mapped[wanted[lo] : wanted[lo] + hi - lo],
                        )
            else:
                for lo in range(0, len(wanted), most):
                    yield chunk, dest[lo : lo + most], wanted[lo : lo + most], mapped[wanted[lo : lo + most]]

    def backfill_sums(self) -> int:
        """Checksums for rows that have none (written before checksums existed), from
        the rows as they are now; ``reindex`` and ``index --repair`` call it, under the
        writer's lock. Returns how many rows got one."""
        done, created = 0, False
        for chunk in self.chunks():
            sums_path = self.sums_path(chunk)
            have = sums_path.stat().st_size // 4 if sums_path.is_file() else 0
            total = self.rows_in(chunk)
            if have < total:
                created = created or not sums_path.is_file()
                self._write_sums(chunk, total, np.zeros(0, np.uint32))  # fills the gap up to the last row
                done += total - have
        if created:  # a new checksum file's name, made durable
            _fsync_dir(self.folder)
        return done

    def rows_in(self, chunk: int) -> int:
        return self.path(chunk).stat().st_size // self.row_bytes

    def remove(self, chunk: int) -> int:
        """Delete a chunk no segment refers to any more (``compact``); its size in bytes."""
        self._changing()
        path = self.path(chunk)
        size = path.stat().st_size
        self._maps.pop(chunk, None)
        self._mmaps.pop(chunk, None)
        self._sums.pop(chunk, None)
        path.unlink()
        self.sums_path(chunk).unlink(missing_ok=True)
        _fsync_dir(self.folder)
        return size

    def bytes_on_disk(self) -> int:
        return sum(self.path(c).stat().st_size for c in self.chunks())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
