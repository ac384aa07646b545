"""``index_paths``: images -> masks -> segment embeddings -> store + FAISS.

Each computed group of photos (one on a CPU, ``--encoder-batch`` on a GPU) is one
store transaction (their rows and all their segments; a failure is one of its own),
so a kill at any moment loses at most the group in flight and never leaves a
half-written image; the FAISS file is reconciled with the store on every open.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from usesearch.devices import compile_note, compiles, idle_gpus_note, resolve_device
from usesearch.devices import describe as describe_device
from usesearch.errors import (
    BadArgumentError,
    UsesearchError,
)
from usesearch.io.files import photos_under
from usesearch.masks.registry import build_masker, check_masker_for
from usesearch.models.compiling import apply_compile
from usesearch.models.factory import choose_preset, load_model
from usesearch.models.presets import resolve_embedder

from . import faiss_gpu, index_choice, read_ahead
from .compute import Computed, ModelStage, photos_per_masker_call
from .folder import (
    check_paths,
    is_new,
    open_store,
)
from .image_writes import PhotoWrite
from .index_checks import as_built
from .options import IndexOptions, IndexReport
from .records import NO_MASKER, IndexInfo
from .writer import Writer


def index_paths(
    paths: list[str | os.PathLike],
    db_dir: str | os.PathLike,
    options: IndexOptions | None = None,
    progress: Callable[[IndexReport, str, int], None] | None = None,
) -> IndexReport:
    """Index every image under ``paths`` into ``db_dir``; safe to re-run and to kill."""
    options = options or IndexOptions()
    if not isinstance(options, IndexOptions):  # (a dict failed deep inside: "'dict' object has no attribute …")
        raise BadArgumentError(f"options is an IndexOptions, not a {type(options).__name__}: IndexOptions(**them)")
    db_dir = check_paths(paths, db_dir)
    options = as_built(db_dir, options)
    report = IndexReport(devices=check_devices(options))
    start = time.perf_counter()
    files = photos_under(paths, refuse_none=is_new(db_dir, options))  # before the models
    options = decide_compile(
        options, resolve_device(options.device).type, photos_to_index(db_dir, options, files), report
    )
    model, masker = load_models(options)  # first: missing weights must not leave an empty index folder behind
    with Writer(db_dir, options, identity(model, masker, options), paths, model) as writer:
        report.share_lists_of(writer)
        per_call = photos_per_masker_call(masker)
        on_gpu = model.device.type == "cuda"
        workers = read_ahead.workers_for(on_gpu)
        stage = ModelStage(model, masker, overlap=on_gpu)

        def groups() -> Iterator[str]:
            group: list[read_ahead.Photo] = []
            computing: deque[Future[Computed]] = deque()
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
            report.failed_before = writer.failed_before
    report.seconds = time.perf_counter() - start
    return report


def check_devices(options: IndexOptions) -> list[str]:
    """Where the models and FAISS will run, a line each; a device that cannot work
    (``--device cuda`` without CUDA, ``--faiss-device cuda`` with faiss-cpu) is
    refused here, before any model loads or any photo is read."""
    device = resolve_device(options.device)
    lines = [describe_device(device, options.precision), faiss_gpu.note(options.faiss_device)]
    idle = idle_gpus_note(device)
    return lines + [idle] if idle else lines


def photos_to_index(db_dir: Path, options: IndexOptions, files: list) -> int:
    """About how many of the photos listed this run will compute: those listed less
    those the index records (a daily rerun over an archive computes its few new photos,
    and compiles as a short run does). Where the index holds photos from elsewhere
    too, fewer: it then compiles less, never more."""
    if is_new(db_dir, options):
        return len(files)
    try:
        store = open_store(db_dir, options.db_url, read_only=True)
    except UsesearchError:  # (said in its own words when the run opens it)
        return len(files)
    try:
        return max(0, len(files) - store.photos_recorded())
    finally:
        store.close()


def decide_compile(options: IndexOptions, device_type: str, photos: int, report: IndexReport) -> IndexOptions:
    """``options`` with ``compile`` decided (``devices.compiles``) for a run of
    ``photos`` on ``device_type``, and the run summary's line on it, where it has one."""
    compiled = compiles(options.compile, device_type, photos)
    note = compile_note(options.compile, compiled, device_type, photos)
    if note:
        report.devices.append(note)
    return replace(options, compile=compiled)


def load_embedder(options: IndexOptions):
    """The segment embedder for these options (no masker: a labelled dataset's own masks)."""
    preset = choose_preset(options.preset, options.head)
    embedder = resolve_embedder(preset, options.embedder, options.head)
    device = resolve_device(options.device)
    return load_model(preset, embedder=embedder, device=device, head=options.head, precision=options.precision)


def load_models(options: IndexOptions):
    """(segment embedder, masker) for these options, every model on one device; the
    masker and its options checked first (a refusal must not wait for the models)."""
    chosen = choose_preset(options.preset, options.head)
    check_masker_for(options.masker, chosen, options.masker_options)
    model = load_embedder(options)
    device = resolve_device(options.device)
    masker = build_masker(options.masker, model.preset, device, options.precision, **options.masker_options)
    apply_compile(options.compile, [model], masker)
    return model, masker


def identity(model, masker, options: IndexOptions) -> IndexInfo:
    """The index's identity for this run; ``masker`` None for a labelled dataset's own
    masks, which any masker's index takes."""
    return IndexInfo(
        preset=model.preset.name,
        embedder=model.kind,
        fingerprint=model.fingerprint,
        head=str(Path(options.head).resolve()) if options.head else None,
        dim=model.dim,
        masker=masker.name if masker is not None else NO_MASKER,
        masker_params=masker.params() if masker is not None else {},
        factory=options.factory or index_choice.choose(0, model.dim).factory,
        index_mode="fixed" if options.factory else "auto",
        shard_size=index_choice.SHARD_SIZE if options.shard_size is None else options.shard_size,
    )


def _commit_group(done: Computed, writer: Writer, report: IndexReport) -> None:
    """Commit a computed group: its photos in one transaction, each failure in its own."""
    results = []
    for photo, outcome in zip(done.photos, done.outcomes):
        found = photo.found
        if isinstance(outcome, BaseException):
            writer.fail(found.key, found.path, photo.sha256, outcome, report, file_stat=photo.file_stat)
        else:
            hw = photo.rgb.shape[:2]
            results.append(PhotoWrite(found.key, found.path, photo.sha256, hw, *outcome, file_stat=photo.file_stat))
    if results:
        writer.commit(results, report)
    for stage, seconds in done.stages.items():
        report.add_stage(stage, seconds)
    report.masker_seconds += done.masker_seconds
    report.model_seconds += done.model_seconds
    report.masker_forward_seconds += done.stages.get("SAM encoder", 0.0) + done.stages.get("SAM decoder", 0.0)
