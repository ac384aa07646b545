"""Read-ahead advice for re-scoring from cold embedding files (``EmbeddingFiles._advise``)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from usesearch.indexer import embeddings, row_scores
from usesearch.indexer.embeddings import EmbeddingFiles

pytestmark = pytest.mark.skipif(embeddings._LIBC is None, reason="read-ahead advice is Linux only")


class Spy:
    """Stands in for a chunk's mmap and records the advice given to it."""

    def __init__(self, mm: mmap.mmap):
        self.mm, self.calls = mm, []

    def __len__(self) -> int:
        return len(self.mm)

    def madvise(self, option: int, start: int = 0, length: int | None = None) -> None:
        self.calls.append((option, start, length))
        self.mm.madvise(option, start, length)


def _files(tmp_path, rows: int = 3000, dim: int = 96):  # 192-byte rows: ~21 a page
    files = EmbeddingFiles(tmp_path / "emb", dim)
    data = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16)
    return files, data, *files.append(data)


def test_scores_with_read_ahead_equal_scores_without(tmp_path):
    files, data, chunks, rows = _files(tmp_path)
    plain = EmbeddingFiles(files.folder, files.dim)
    plain.read_ahead = False
    rng = np.random.default_rng(1)
    query = rng.standard_normal(files.dim).astype(np.float32)
    for pick in (rng.permutation(len(data))[:700], np.arange(100, 900), np.array([2999, 5, 6, 7, 1500])):
        got = files.scores(chunks[pick], rows[pick], query)
        np.testing.assert_array_equal(got, plain.scores(chunks[pick], rows[pick], query))
        np.testing.assert_array_equal(files.read(chunks[pick], rows[pick]), data[pick].astype(np.float32))


def test_advice_covers_every_wanted_row_on_a_cold_cache(tmp_path, monkeypatch):
    files, data, chunks, rows = _files(tmp_path)
    files._map(0, len(data))
    spy = files._mmaps[0] = Spy(files._mmaps[0])  # type: ignore[assignment]
    monkeypatch.setattr(EmbeddingFiles, "_cached", staticmethod(lambda mapped, pages: False))  # as if cold
    pick = np.array([2800, 5, 1400, 6, 700, 2100, 1401, 2999])  # ~33 pages apart, out of order
    files.scores(chunks[pick], rows[pick], np.ones(files.dim, np.float32))
    assert spy.calls and all(option == mmap.MADV_WILLNEED for option, _, _ in spy.calls)
    starts = [start for _, start, _ in spy.calls]
    assert starts == sorted(starts) and all(start % mmap.PAGESIZE == 0 for start in starts)
    for row in rows[pick].tolist():  # each wanted row's bytes lie in one advised range
        lo, hi = row * files.row_bytes, (row + 1) * files.row_bytes
        assert any(start <= lo and hi <= start + length for _, start, length in spy.calls), row
    advised = sum(length for _, _, length in spy.calls)
    assert (
        len(spy.calls) == 5 and advised <= 16 * mmap.PAGESIZE
    )  # wanted pages (and 2800-2999: one range), not the file


def test_no_advice_when_the_rows_are_cached(tmp_path, monkeypatch):
    files, data, chunks, rows = _files(tmp_path)
    files._map(0, len(data))
    spy = files._mmaps[0] = Spy(files._mmaps[0])  # type: ignore[assignment]
    monkeypatch.setattr(EmbeddingFiles, "_cached", staticmethod(lambda mapped, pages: True))
    files.scores(chunks[:50], rows[:50], np.ones(files.dim, np.float32))
    assert spy.calls == []


def test_cached_probe_sees_a_page_just_read(tmp_path):
    files, data, chunks, rows = _files(tmp_path)
    mapped = files._map(0, len(data))
    assert float(mapped[0].astype(np.float32).sum()) == float(data[0].astype(np.float32).sum())  # faults page 0 in
    assert EmbeddingFiles._cached(mapped, np.array([0]))


def _resident_kb(path) -> int:
    """This process's resident kB of the mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_let_go_drops_the_rows_read_from_resident_memory_and_they_read_the_same(tmp_path):
    files, data, chunks, rows = _files(tmp_path, rows=20_000, dim=128)  # 5 MB
    first = files.read(chunks, rows, np.float16)
    path = files.path(int(chunks[0]))
    held = _resident_kb(path)
    assert held >= 4_000  # every page of the chunk was touched
    files.let_go()
    assert _resident_kb(path) < held / 10
    assert np.array_equal(files.read(chunks, rows, np.float16), first) and np.array_equal(first, data)


def test_scores_without_torch_loaded_equal_torchs(tmp_path, monkeypatch):
    """Where no model run loaded torch (`similar` on a compressed index), NumPy scores the
    rows: the same float32 products as torch's, to float32 rounding."""
    import sys

    import torch  # noqa: F401 - as a model run has it

    files, data, chunks, rows = _files(tmp_path)
    query = np.random.default_rng(2).standard_normal(files.dim).astype(np.float32)
    pick = np.random.default_rng(3).permutation(len(data))[:900]
    with_torch = files.scores(chunks[pick], rows[pick], query)
    monkeypatch.setitem(sys.modules, "torch", None)  # as where it cannot be imported
    monkeypatch.setattr(row_scores, "_torch_product", None)  # (NumPy's must be the one that runs)
    without = files.scores(chunks[pick], rows[pick], query)
    np.testing.assert_allclose(without, with_torch, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(without, data[pick].astype(np.float64) @ query, rtol=1e-4, atol=1e-4)
