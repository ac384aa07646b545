"""SAM 3's image step kept per photo, so a second phrase over the same photos costs
the phrase step only: a bounded LRU in memory and, optionally, a bounded folder of
safetensors files next to the index (a query from the command line is a new process
each time: only the folder carries the image step from one to the next).

Entries are keyed by the photo's content hash (SHA-256, as the catalog records it) in
a folder per SAM 3 model identity (weights and device kind), so a changed photo or
other weights never meet old features. Files are written by one background thread,
off the query's path, atomically (a temporary file renamed into place); the oldest
files go past the folder's bound. A file that fails to load is dropped and recomputed."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from usesearch.io.atomic import write_atomic

CACHE_FOLDER = "sam3-cache"  # in the index folder
_KEY = re.compile(r"^[0-9a-f]{64}$")
MAX_PENDING = 4  # photos' features waiting for the writer thread, at most
LEFT_TMP_NS = 600 * 10**9  # a write's temporary file this old was left by a killed process
# What a cache file says it holds (its safetensors metadata): a file without it, or of
# another layout (another usesearch's, a stray file), is recomputed, not fed to SAM 3.
LAYOUT = {"format": "usesearch-sam3-features", "version": "1"}

Features = list[torch.Tensor]


def features_bytes(features: Features) -> int:
    return sum(t.numel() * t.element_size() for t in features)


class ImageStateCache:
    """``get(key)`` / ``put(key, features)``; ``memory_bytes`` bounds what stays in
    memory (on the model's device), ``folder`` with ``disk_bytes`` what stays on disk."""

    def __init__(
        self, memory_bytes: int, folder: Path | None = None, disk_bytes: int = 0, bound_over: Path | None = None
    ):
        """``bound_over``: the folder whose files (``*/*.safetensors``: every model
        identity's) ``disk_bytes`` bounds, where ``folder`` is one of its subfolders;
        else ``folder`` alone. Else another device or re-pulled weights left theirs for good."""
        self.memory_bytes, self.disk_bytes = memory_bytes, disk_bytes
        self.folder = folder if folder is not None and disk_bytes > 0 else None
        self.bound_over = bound_over
        self._memory: OrderedDict[str, Features] = OrderedDict()
        self._lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._bytes = 0  # of the features in memory

    def get(self, key: str, device: torch.device) -> Features | None:
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                return found
        found = self._load(key, device)
        if found is not None:
            self._remember(key, found)
        return found

    def put(self, key: str, features: Features) -> None:
        self._remember(key, features)
        if self.folder is not None and _KEY.match(key) and features_bytes(features) <= self.disk_bytes:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="usesearch-sam3-cache")
            while len(self._pending) >= MAX_PENDING:  # a slow disk: wait, rather than pile copies up
                self._pending.pop(0).result()
            # Copied off the GPU now: a queued GPU view would keep the features there after
            # the batch is segmented (only the batch and the memory cache may hold them).
            cpu = [t.detach().to("cpu", copy=True) for t in features]
            self._pending.append(self._writer.submit(self._write, key, cpu))

    def flush(self) -> None:
        """Wait for the files being written (before a process exits)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    # -- memory ------------------------------------------------------------------
    def _remember(self, key: str, features: Features) -> None:
        size = features_bytes(features)
        if size > self.memory_bytes:
            return
        with self._lock:
            replaced = self._memory.pop(key, None)
            self._bytes += size - (features_bytes(replaced) if replaced is not None else 0)
            self._memory[key] = features
            while self._bytes > self.memory_bytes:
                self._bytes -= features_bytes(self._memory.popitem(last=False)[1])

    # -- disk --------------------------------------------------------------------
    def _path(self, key: str) -> Path | None:
        if self.folder is None or not _KEY.match(key):
            return None
        return self.folder / f"{key}.safetensors"

    def _load(self, key: str, device: torch.device) -> Features | None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as opened:
                if opened.metadata() != LAYOUT:
                    raise ValueError("not a cache file of this layout")
            tensors = load_file(path, device=str(device))
            features = [tensors[f"level{i}"] for i in range(len(tensors))]
            if not features or any(level.ndim != 4 for level in features):  # [1, C, H, W] each
                raise ValueError("not SAM 3's image features")
        except Exception:  # noqa: BLE001 - a torn or foreign file is recomputed, never fatal
            with contextlib.suppress(OSError):  # a read-only folder: left as it is
                path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):  # a read-only folder goes without the touch
            os.utime(path)  # recently used: kept longest
        return features

    def _write(self, key: str, features: Features) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        assert path is not None and self.folder is not None
        tensors = {f"level{i}": t.cpu().contiguous() for i, t in enumerate(features)}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=LAYOUT))
            self._bound_folder()
        except Exception:  # noqa: BLE001 - OSError, or safetensors' own error for a full or read-only disk
            pass  # the cache is an optimisation: the query's answer stands

    def _bound_folder(self) -> None:
        """The folder kept within ``disk_bytes``, its oldest entries dropped first. A
        write's temporary file that a killed process left (100 MB with the real model)
        counts too, and goes once older than a write takes."""
        assert self.folder is not None
        root, depth = (self.bound_over, "*/") if self.bound_over else (self.folder, "")
        sized, now = [], time.time_ns()
        for path in [*root.glob(f"{depth}*.safetensors"), *root.glob(f"{depth}.*.safetensors.*.tmp")]:
            with contextlib.suppress(OSError):  # gone meanwhile (another process's bound)
                info = path.stat()
                if path.suffix == ".tmp" and now - info.st_mtime_ns > LEFT_TMP_NS:
                    path.unlink()  # a killed write's
                    continue
                sized.append((info.st_mtime_ns, info.st_size, path))
        sized.sort()
        total = sum(size for _, size, _ in sized)
        for _, size, old in sized[:-1]:  # the newest file stays even past the bound
            if total <= self.disk_bytes:
                break
            if old.suffix != ".tmp":  # (another write's, under way: counted, not cut short)
                total -= size
                old.unlink(missing_ok=True)
