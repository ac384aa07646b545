"""``index_paths``: images -> masks -> segment embeddings -> store + FAISS.

Each image is one store transaction (its row and all its segments, or its failure),
so a kill at any moment loses at most the image in flight and never leaves a
half-written image; the FAISS file is reconciled with the store on every open.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from usesearch.devices import describe as describe_device
from usesearch.devices import resolve_device
from usesearch.errors import DiskFullError, IndexLockedError, IndexMismatchError, UsesearchError, is_disk_full
from usesearch.io.files import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, walk
from usesearch.masks.maskers import build_masker
from usesearch.masks.sam_fast import compile_modules
from usesearch.models.factory import choose_preset, load_model, resolve_embedder
from usesearch.reports import RunReport

from . import faiss_gpu, index_choice, read_ahead, vectors
from .compute import Computed, ModelStage
from .records import DONE, IndexInfo, info_summary
from .store import Store

DB_FILE, FAISS_FILE, LOCK_FILE = "segments.sqlite", "vectors.faiss", "writer.lock"
log = logging.getLogger(__name__)


@dataclass
class IndexOptions:
    preset: str | None = None  # None: the head's preset, else b16 (real weights)
    embedder: str | None = None  # None: 'use' where a head exists (or is given), else 'crop'
    head: str | None = None
    masker: str | None = None  # None: 'sam', or 'felzenszwalb' for the random-weight tiny preset
    masker_options: dict = field(default_factory=dict)
    device: str | None = None  # the models' (usesearch.devices): None is CUDA when torch sees it, else the CPU
    faiss_device: str | None = (
        None  # FAISS's (faiss_gpu.resolve): None is the GPU only where this faiss has GPU support
    )
    factory: str | None = None  # None: chosen by the collection's size (index_choice.py), and again as it grows
    retry_failed: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    db_url: str | None = None
    shard_size: int | None = None  # segments per FAISS shard (0: one shard); None: as the index has it
    faiss_every_s: float = 120.0  # also written at the end and on Ctrl-C
    compile: bool = False  # torch.compile SAM and the backbones (for long GPU runs)
    repair: bool = False  # first drop photos with damaged embedding rows, so this run embeds them again


@dataclass
class IndexReport(RunReport):
    segments: int = 0
    model_seconds: float = 0.0  # inside the masker and the embedder
    masker_seconds: float = 0.0  # inside the masker
    masker_forward_seconds: float = (
        0.0  # of which SAM's forward passes (encoder, decoder), where the masker reports them
    )
    loop_seconds: float = 0.0  # the per-image loop, without start-up (model loading)
    interrupted: bool = False
    devices: list[str] = field(default_factory=list)  # where the models and FAISS ran, a line each
    repaired: list[str] = field(default_factory=list)  # photos with damaged embedding rows, embedded again
    unrepaired: list[str] = field(default_factory=list)  # damaged ones outside the folders indexed: left
    stages: dict[str, float] = field(default_factory=dict)  # wall seconds by stage, for benchmarks

    def add_stage(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


def db_url_for(db_dir: Path, db_url: str | None) -> str:
    return db_url or f"sqlite:///{db_dir / DB_FILE}"


def check_db_dir(db_dir: str | os.PathLike) -> Path:
    """An index folder argument that can be one: not empty, not an existing file."""
    if not os.fspath(db_dir).strip():
        raise UsesearchError("--db is empty: name the index folder")
    db_dir = Path(db_dir)
    if db_dir.is_symlink() and not db_dir.exists():
        raise UsesearchError(
            f"--db {db_dir} is a symbolic link to {os.readlink(db_dir)}, which does not exist: "
            "create that folder, or name another"
        )
    if db_dir.exists() and not db_dir.is_dir():
        raise UsesearchError(f"--db {db_dir} is a file; an index is a folder (give a new or existing index folder)")
    return db_dir


@contextmanager
def writer_lock(db_dir: Path) -> Iterator[None]:
    db_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(db_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise IndexLockedError(
                f"another indexer (pid {holder}) is writing to {db_dir}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process dies


def check_identity(store: Store, info: IndexInfo) -> IndexInfo:
    """First run records the model; later runs must match it."""
    existing = store.info()
    if existing is None:
        store.set_info(info)
        return info
    if existing.fingerprint != info.fingerprint:
        raise IndexMismatchError(
            f"this index was built with {info_summary(existing)}; refusing to add segments from "
            f"{info_summary(info)}. Use the same --preset/--embedder/--head, or a new --db."
        )
    if (existing.masker, existing.masker_params) != (info.masker, info.masker_params):
        raise IndexMismatchError(
            f"this index was built with masker {existing.masker} {existing.masker_params}; "
            f"this run asks for {info.masker} {info.masker_params}. Use the same masker or a new --db."
        )
    return existing


def index_paths(
    paths: list[str | os.PathLike],
    db_dir: str | os.PathLike,
    options: IndexOptions | None = None,
    progress: Callable[[IndexReport, str, int], None] | None = None,
) -> IndexReport:
    """Index every image under ``paths`` into ``db_dir``; safe to re-run and to kill."""
    options = options or IndexOptions()
    db_dir = check_paths(paths, db_dir)
    report = IndexReport(devices=check_devices(options))
    start = time.perf_counter()
    model, masker = load_models(options)  # first: missing weights must not leave an empty index folder behind
    with Writer(db_dir, options, identity(model, masker, options), paths) as writer:
        report.repaired, report.unrepaired = writer.repaired, writer.unrepaired
        files = list(walk(paths))
        per_call = max(1, getattr(masker, "images_per_call", 1))
        on_gpu = model.device.type == "cuda"
        workers = read_ahead.workers_for(on_gpu)
        stage = ModelStage(model, masker, overlap=on_gpu)

        def groups():
            group: list[read_ahead.Photo] = []
            computing: deque[Future] = deque()
            for path, photo in read_ahead.photos(files, writer, options, report, workers, ahead=2 * per_call + workers):
                if photo is not None:
                    group.append(photo)
                if len(group) == per_call:
                    computing.append(stage.submit(group))
                    group = []
                    while len(computing) > stage.ahead:
                        _commit_group(computing.popleft().result(), writer, report)
                yield path
            if group:
                computing.append(stage.submit(group))
            while computing:
                _commit_group(computing.popleft().result(), writer, report)

        try:
            writer.run(groups(), report, lambda path: progress and progress(report, path, len(files)))
        finally:
            stage.close()
    report.seconds = time.perf_counter() - start
    return report


def check_paths(paths: list[str | os.PathLike], db_dir: str | os.PathLike) -> Path:
    db_dir = check_db_dir(db_dir)
    missing = [os.fspath(p) for p in paths if not os.path.lexists(p)]
    if missing:  # before the lock: a typo must not leave an empty index folder behind
        raise UsesearchError(
            f"no such file or folder: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return db_dir


def check_devices(options: IndexOptions) -> list[str]:
    """Where the models and FAISS will run, a line each; a device that cannot work
    (``--device cuda`` without CUDA, ``--faiss-device cuda`` with faiss-cpu) is
    refused here, before any model loads or any photo is read."""
    return [describe_device(resolve_device(options.device)), faiss_gpu.note(options.faiss_device)]


def load_models(options: IndexOptions):
    """(segment embedder, masker) for these options, every model on one device."""
    device = resolve_device(options.device)
    preset = choose_preset(options.preset, options.head)
    embedder = resolve_embedder(preset, options.embedder, options.head)
    model = load_model(preset, embedder=embedder, device=device, head=options.head)
    masker = build_masker(options.masker, model.preset, device, **options.masker_options)
    if options.compile:
        sam = getattr(getattr(masker, "generator", None), "model", None)
        backbones = model.use.encoder if hasattr(model, "use") else model.model.visual
        compile_modules(backbones, *([sam.image_encoder, sam.mask_decoder] if sam is not None else []))
    return model, masker


def identity(model, masker, options: IndexOptions) -> IndexInfo:
    return IndexInfo(
        preset=model.preset.name,
        embedder=model.kind,
        fingerprint=model.fingerprint,
        head=str(Path(options.head).resolve()) if options.head else None,
        dim=model.dim,
        masker=masker.name,
        masker_params=masker.params(),
        factory=options.factory or index_choice.choose(0, model.dim).factory,
        index_mode="fixed" if options.factory else "auto",
    )


class Writer:
    """The one writer of an index folder: its lock, its store (checked against the
    model's identity) and its FAISS file. Every image is committed through it, one
    transaction each, by the sequential indexer and by the Ray driver alike."""

    def __init__(self, db_dir: Path, options: IndexOptions, info: IndexInfo | None, paths: list | None = None):
        self.db_dir, self.options, self.wanted = db_dir, options, info  # None: the index's own identity
        self.paths = paths  # the folders being indexed: ``--repair`` drops damaged photos under them only
        self.repaired: list[str] = []  # photos whose damaged embedding rows were dropped, to be embedded again
        self.unrepaired: list[str] = []  # damaged ones outside ``paths``: left as they are

    def __enter__(self) -> Writer:
        self._lock = writer_lock(self.db_dir)
        self._lock.__enter__()
        self.store = None
        try:
            self.store = Store(db_url_for(self.db_dir, self.options.db_url), folder=self.db_dir)
            self.store.claim()
            self.info = check_identity(self.store, self.wanted) if self.wanted is not None else self.store.info()
            if self.info is None:
                raise UsesearchError(f"{self.db_dir} holds no index yet")
            if self.options.shard_size is not None and self.options.shard_size != self.info.shard_size:
                self.store.set_shard_size(self.options.shard_size)  # the next load lays the shards out anew
                self.info.shard_size = self.options.shard_size
            if self.options.repair:  # before the FAISS load, which may rebuild from the damaged rows
                self._drop_damaged()
            self.index, _ = vectors.load(
                self.db_dir / FAISS_FILE,
                self.store,
                self.info.dim,
                self.info.factory,
                faiss_gpu.resolve(self.options.faiss_device),
                self.info.shard_size,
            )
            self.in_sync = True  # loaded: verified, then reconciled unless written at this generation
        except BaseException:
            try:
                if self.store is not None:
                    self.store.close()  # and with it the catalog's lock
            finally:
                self._lock.__exit__(None, None, None)
            raise
        return self

    def _drop_damaged(self) -> None:
        """``--repair``: photos under ``paths`` with a damaged embedding row lose their
        segments (one transaction each), so the walk finds them new and embeds them
        again; damaged photos elsewhere are left and named."""
        roots = [os.path.realpath(os.fspath(p)) for p in self.paths or []]
        for image_id in self.store.damaged_images():
            record = self.store.image(image_id)
            real = os.path.realpath(os.fsdecode(record.fs_path))
            if any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
                self.store.remove_image(image_id)
                self.repaired.append(record.path)
            else:
                self.unrepaired.append(record.path)

    def __exit__(self, *exc) -> None:
        try:
            self.store.close()
        finally:
            self._lock.__exit__(*exc)

    def skip(self, key: bytes, sha256: str, coming: set[str] = frozenset()) -> bool:
        """True when this file needs no work: done (or failed, unless retrying) with
        the same content, or it is a new path whose content is already indexed under
        another path or ``coming`` (about to be, earlier in this run)."""
        existing = self.store.image_by_path(key)
        if (
            existing is not None
            and existing.sha256 == sha256
            and (existing.status == DONE or not self.options.retry_failed)
        ):
            return True
        return existing is None and (sha256 in coming or self.store.done_with_hash(sha256) is not None)

    @contextmanager
    def _changing(self):
        """A store change and the index change that mirrors it: until both are done
        (an interruption between them included) a write must not record that the
        index holds the store's generation."""
        self.in_sync = False
        yield
        self.in_sync = True

    def commit(
        self, key: bytes, path: str, sha256: str, hw, segments: list[dict], embeddings: np.ndarray, report: IndexReport
    ) -> None:
        with self._changing():
            start = time.perf_counter()
            removed, added = self.store.save_image(key, path, sha256, hw, segments, embeddings)
            middle = time.perf_counter()
            self.index.remove(removed)
            if added:
                if not self.index.is_trained:
                    vectors.reconcile(self.index, self.store)  # trains on what the store now holds
                else:
                    # What the embedding files hold (float16), so a rebuild gives the same scores.
                    self.index.add(np.asarray(added, np.int64), embeddings.astype(np.float16).astype(np.float32))
        report.add_stage("store", middle - start)
        report.add_stage("FAISS", time.perf_counter() - middle)
        report.done += 1
        report.segments += len(added)

    def fail(self, key: bytes, path: str, sha256: str | None, exc: BaseException, report: IndexReport) -> None:
        with self._changing():
            removed, _ = self.store.save_image(key, path, sha256, None, error=exc)
            self.index.remove(removed)
        report.record_failure(path, exc)

    def remove_image(self, image_id: int) -> int:
        """Remove an image with its segments (one transaction) and their vectors."""
        with self._changing():
            removed = self.store.remove_image(image_id)
            self.index.remove(removed)
        return len(removed)

    def write(self) -> None:
        self.index = vectors.write_atomic(
            self.index, self.db_dir / FAISS_FILE, self.store, self.info.dim, self.info.factory, in_sync=self.in_sync
        )

    def run(self, steps, report: IndexReport, progress: Callable[[str], None]) -> None:
        """Drive ``steps`` (each commits some images and yields a path for progress),
        writing the FAISS file every ``faiss_every_s``, at the end (after following
        the collection's growth) and on Ctrl-C."""
        last_write = time.monotonic()
        loop_start = time.perf_counter()
        try:
            for path in steps:
                progress(path)
                if time.monotonic() - last_write > self.options.faiss_every_s:
                    self.write()
                    last_write = time.monotonic()
            self.index = _follow_growth(self.index, self.store, self.info, self.db_dir)
            self.write()
        except KeyboardInterrupt:
            report.interrupted = True  # finished images are committed; keep them
            self.write()
        except Exception as exc:
            if is_disk_full(exc):
                # What is committed stays committed; the vector file catches up on the next open.
                raise DiskFullError(
                    f"disk full: cannot write the index in {self.db_dir}; free space and run "
                    "`usesearch index` again (finished images are kept)"
                ) from None
            raise
        finally:
            report.loop_seconds = time.perf_counter() - loop_start


def _commit_group(done: Computed, writer: Writer, report: IndexReport) -> None:
    """Commit a computed group, each photo (or its failure) in its own transaction."""
    for photo, outcome in zip(done.photos, done.outcomes):
        found = photo.found
        if isinstance(outcome, BaseException):
            writer.fail(found.key, found.path, photo.sha256, outcome, report)
        else:
            writer.commit(found.key, found.path, photo.sha256, photo.rgb.shape[:2], *outcome, report)
    for stage, seconds in done.stages.items():
        report.add_stage(stage, seconds)
    report.masker_seconds += done.masker_seconds
    report.model_seconds += done.model_seconds
    report.masker_forward_seconds += done.stages.get("SAM encoder", 0.0) + done.stages.get("SAM decoder", 0.0)


def _follow_growth(index: vectors.Vectors, store: Store, info: IndexInfo, db_dir: Path) -> vectors.Vectors:
    """An automatic index that the collection has outgrown (or shrunk out of) is
    rebuilt as the index its size calls for."""
    n = index.ntotal
    gpu = faiss_gpu.wanted(index.device)
    if info.index_mode != "auto" or not index_choice.outgrown(info.factory, n, info.dim, gpu):
        return index
    choice = index_choice.choose(n, info.dim, gpu)
    log.warning("%s: %d segments outgrew %s; building %s", db_dir, n, info.factory, choice.describe(n, info.dim))
    rebuilt = vectors.rebuild(store, info.dim, choice.factory, index.device, info.shard_size)
    store.set_factory(choice.factory)
    info.factory = choice.factory
    return rebuilt
