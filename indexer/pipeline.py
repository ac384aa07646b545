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
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from usesearch.errors import UsesearchError
from usesearch.reports import RunReport
from usesearch.factory import choose_preset, load_model, resolve_embedder
from usesearch.maskers import proposal_masks

from . import index_choice, vectors
from usesearch.files import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode, read_bytes, walk
from usesearch.maskers import build_masker
from .store import DONE, IndexInfo, Store, info_summary

DB_FILE, FAISS_FILE, LOCK_FILE = "segments.sqlite", "vectors.faiss", "writer.lock"
log = logging.getLogger("usesearch.index")


class IndexMismatchError(UsesearchError):
    """The index was built with another model or masker than the one asked for."""


class IndexLockedError(UsesearchError):
    """Another indexer is writing to this index."""


@dataclass
class IndexOptions:
    preset: str | None = None  # None: the head's preset, else b16 (real weights)
    embedder: str | None = None  # None: 'use' where a head exists (or is given), else 'crop'
    head: str | None = None
    masker: str | None = None  # None: 'sam', or 'felzenszwalb' for the random-weight tiny preset
    masker_options: dict = field(default_factory=dict)
    device: str | None = None
    factory: str | None = None  # None: chosen by the collection's size (index_choice.py), and again as it grows
    retry_failed: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    db_url: str | None = None
    faiss_every_s: float = 120.0  # also written at the end and on Ctrl-C


@dataclass
class IndexReport(RunReport):
    segments: int = 0
    model_seconds: float = 0.0  # inside the masker and the embedder
    masker_seconds: float = 0.0  # inside the masker
    masker_forward_seconds: float = 0.0  # of which SAM's forward passes (encoder, decoder), where the masker reports them
    loop_seconds: float = 0.0  # the per-image loop, without start-up (model loading)
    interrupted: bool = False


def db_url_for(db_dir: Path, db_url: str | None) -> str:
    return db_url or f"sqlite:///{db_dir / DB_FILE}"


def check_db_dir(db_dir: str | os.PathLike) -> Path:
    """An index folder argument that can be one: not empty, not an existing file."""
    if not os.fspath(db_dir).strip():
        raise UsesearchError("--db is empty: name the index folder")
    db_dir = Path(db_dir)
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
            raise IndexLockedError(f"another indexer (pid {holder}) is writing to {db_dir}; wait for it to finish") from None
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
    db_dir = check_db_dir(db_dir)
    missing = [os.fspath(p) for p in paths if not os.path.lexists(p)]
    if missing:  # before the lock: a typo must not leave an empty index folder behind
        raise UsesearchError(f"no such file or folder: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    report = IndexReport()
    start = time.perf_counter()
    # Models first: missing weights must not leave an empty index folder behind either.
    preset = choose_preset(options.preset, options.head)
    embedder = resolve_embedder(preset, options.embedder, options.head)
    model = load_model(preset, embedder=embedder, device=options.device, head=options.head)
    masker = build_masker(options.masker, model.preset, options.device, **options.masker_options)
    with writer_lock(db_dir):
        store = Store(db_url_for(db_dir, options.db_url))
        info = check_identity(
            store,
            IndexInfo(
                preset=model.preset.name, embedder=model.kind, fingerprint=model.fingerprint,
                head=str(Path(options.head).resolve()) if options.head else None, dim=model.dim,
                masker=masker.name, masker_params=masker.params(),
                factory=options.factory or index_choice.choose(0, model.dim).factory,
                index_mode="fixed" if options.factory else "auto",
            ),
        )
        index, _ = vectors.load(db_dir / FAISS_FILE, store, info.dim, info.factory, options.device)

        def write(index):
            return vectors.write_atomic(index, db_dir / FAISS_FILE, store, info.dim, info.factory)

        last_write = time.monotonic()
        loop_start = time.perf_counter()
        try:
            files = list(walk(paths))
            per_call = max(1, getattr(masker, "images_per_call", 1))
            for start in range(0, len(files), per_call):
                group = files[start : start + per_call]
                _index_group(group, store, index, model, masker, options, report)
                if progress:
                    progress(report, group[-1].path, len(files))
                if time.monotonic() - last_write > options.faiss_every_s:
                    index = write(index)
                    last_write = time.monotonic()
            index = _follow_growth(index, store, info, db_dir)
            index = write(index)
        except KeyboardInterrupt:
            report.interrupted = True  # finished images are committed; keep them
            write(index)
        except Exception as exc:
            if vectors.is_disk_full(exc):
                # What is committed stays committed; the vector file catches up on the next open.
                raise vectors.DiskFullError(f"disk full: cannot write the index in {db_dir}; free space and run "
                                            "`usesearch index` again (finished images are kept)") from None
            raise
        finally:
            store.close()
            report.loop_seconds = time.perf_counter() - loop_start
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class _Decoded:
    found: object  # files.Found
    sha256: str
    rgb: np.ndarray


def _index_group(group, store: Store, index, model, masker, options: IndexOptions, report: IndexReport) -> None:
    """Index a few files: each read, checked and decoded on its own; their masks made
    in one masker call where the masker batches photos (SAM's image encoder)."""
    decoded = [d for d in (_decode_one(found, store, index, options, report) for found in group) if d is not None]
    if not decoded:
        return
    model_start = time.perf_counter()
    forward_before = _forward_seconds(masker)
    try:
        if len(decoded) > 1:
            batches = masker.batch([d.rgb for d in decoded], [d.found.path for d in decoded])
        else:
            batches = [masker(decoded[0].rgb, decoded[0].found.path)]
    except Exception:  # noqa: BLE001 - one photo's failure must not cost the others: retry them one by one
        if len(decoded) == 1:
            batches = [None]
        else:
            for d in decoded:
                _index_group([d.found], store, index, model, masker, options, report)
            return
    report.masker_seconds += time.perf_counter() - model_start
    report.model_seconds += time.perf_counter() - model_start
    report.masker_forward_seconds += _forward_seconds(masker) - forward_before
    for d, proposals in zip(decoded, batches):
        _embed_and_save(d, proposals, store, index, model, masker, report)


def _decode_one(found, store: Store, index, options: IndexOptions, report: IndexReport) -> _Decoded | None:
    """A file's bytes, hash and pixels; None when it is skipped or has failed (recorded)."""
    sha256 = None
    try:
        if found.error is not None:
            raise found.error
        data, sha256 = read_bytes(found.fs_path, options.max_bytes, found.path)
        existing = store.image_by_path(found.key)
        if existing is not None and existing.sha256 == sha256 and (existing.status == DONE or not options.retry_failed):
            report.skipped += 1
            return None
        duplicate = store.done_with_hash(sha256)
        if existing is None and duplicate is not None:
            report.skipped += 1  # same pixels already indexed under another path
            return None
        return _Decoded(found, sha256, decode(data, found.path, options.max_pixels))
    except Exception as exc:  # noqa: BLE001 - any per-image failure is recorded and the run goes on
        _record_failure(found, sha256, exc, store, index, report)
        return None


def _embed_and_save(d: _Decoded, proposals, store: Store, index, model, masker, report: IndexReport) -> None:
    hw = d.rgb.shape[:2]
    try:
        if proposals is None:  # the masker failed on this photo alone: say why
            model_start = time.perf_counter()
            proposals = masker(d.rgb, d.found.path)
            report.masker_seconds += time.perf_counter() - model_start
            report.model_seconds += time.perf_counter() - model_start
        model_start = time.perf_counter()
        embeddings = model.embed_segments(d.rgb, proposal_masks(proposals, hw))
        report.model_seconds += time.perf_counter() - model_start
        segments = [
            dict(
                x=p.bbox[0], y=p.bbox[1], w=p.bbox[2], h=p.bbox[3], area=p.area, rle_counts=p.rle["counts"],
                predicted_iou=p.predicted_iou, stability_score=p.stability_score,
            )
            for p in proposals
        ]
    except Exception as exc:  # noqa: BLE001 - any per-image failure is recorded and the run goes on
        _record_failure(d.found, d.sha256, exc, store, index, report)
        return
    removed, added = store.save_image(d.found.key, d.found.path, d.sha256, hw, segments, embeddings)
    index.remove(removed)
    if added:
        if not index.is_trained:
            vectors.reconcile(index, store)  # trains on what the store now holds
        else:
            # What the embedding files hold (float16), so a rebuild gives the same scores.
            index.add(np.asarray(added, np.int64), embeddings.astype(np.float16).astype(np.float32))
    report.done += 1
    report.segments += len(added)


def _follow_growth(index: vectors.Vectors, store: Store, info: IndexInfo, db_dir: Path) -> vectors.Vectors:
    """An automatic index that the collection has outgrown (or shrunk out of) is
    rebuilt as the index its size calls for."""
    n = index.ntotal
    if info.index_mode != "auto" or not index_choice.outgrown(info.factory, n, info.dim):
        return index
    choice = index_choice.choose(n, info.dim)
    log.warning("%s: %d segments outgrew %s; building %s", db_dir, n, info.factory, choice.describe(n, info.dim))
    rebuilt = vectors.rebuild(store, info.dim, choice.factory, index.device)
    store.set_factory(choice.factory)
    info.factory = choice.factory
    return rebuilt


def _forward_seconds(masker) -> float:
    seconds = getattr(getattr(masker, "generator", None), "seconds", None)
    return seconds["encoder"] + seconds["decoder"] if seconds else 0.0


def _record_failure(found, sha256, exc: BaseException, store: Store, index, report: IndexReport) -> None:
    removed, _ = store.save_image(found.key, found.path, sha256, None, error=exc)
    index.remove(removed)
    report.record_failure(found.path, exc)
