"""``index_paths_ray``: the same indexing as ``index_paths``, as a Ray Data pipeline.

    files (driver) -> read + hash (CPU tasks) -> skip what the catalog has (driver)
      -> decode (CPU tasks) -> masks + embeddings (a pool of actors, each holding the
         masker and the model once; one GPU each where there are GPUs)
      -> a fragment file per image (segments, RLE masks, float16 embeddings: ``fragments.py``)
      -> the driver, the single committer: one catalog transaction per actor call's photos
    (a window of ``WINDOW`` photos at a time)

Nothing is lost or doubled when a part dies: Ray restarts a dead actor and retries
its batch (fragments are written under the image's content hash with an atomic
rename, so a retry rewrites the same file); the committer skips an image the
catalog already has with that content; a fragment left by a killed driver is
committed by the next run instead of computed again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from usesearch.io.files import photos_under

from . import faiss_gpu, fragments
from .compute import compute_photos, encoding_ahead, photos_per_masker_call
from .folder import check_paths, is_new
from .fragments import (
    MAX_WORKER_DEATHS,
    error_text,
    fragment_path,
    read_fragment,
    usable_leftover,
    worker_error,
    write_fragment,
)
from .image_writes import PhotoWrite
from .index_checks import as_built
from .known_images import BATCH
from .options import IndexOptions, IndexReport
from .pipeline import decide_compile, identity, load_models, photos_to_index
from .ray_cluster import actor_device, actors_summary, check_actor_precision, check_address, ray_for_run
from .ray_reads import decode_files, hash_files
from .writer import Writer

# Photos hashed, computed and committed as one Ray pipeline: the driver holds a window's
# rows, not the archive's (650 B a photo in its own lists, 6.5 GB at 10^7, besides Ray's copies), and each window's
# actors load the models once (tens of seconds, against the ~20 minutes a window takes
# on 8 GPUs at 20 photos/s each).
WINDOW = 200_000
# A GPU actor's call: only its first group's encoder runs with nothing to overlap.
GROUPS_PER_CALL = 4
LEFT_PER_COMMIT = 16  # photos a transaction of those a killed run left computed


# -- the actors: masks and embeddings (the read stages: ``ray_reads``) ----------------------
class SegmentWorker:
    """A Ray actor: the masker and the model, loaded once, turn decoded photos into
    fragment files."""

    max_deaths = MAX_WORKER_DEATHS

    def __init__(self, options: IndexOptions, db_dir: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.options, self.db_dir = options, db_dir
        self.model, self.masker = load_models(options)

    def compute(self, rgbs: list[np.ndarray], paths: list[str]) -> list:
        """Each photo's (segment rows, embeddings) or the exception it met: their masks
        in one masker call where it batches photos (a GPU's, ``--encoder-batch``)."""
        return compute_photos(rgbs, paths, self.model, self.masker, IndexReport())

    def _encode_ahead(self, group: list[int], rgbs: list[np.ndarray], shas) -> set[int]:
        """On a GPU, SAM's encoder started on the call's next group while this one decodes
        (``compute.encoding_ahead``), as the sequential indexer does; the group's attempts
        noted first, so a death while both are under way counts for both groups' photos,
        as for one batch of both: each is then computed alone, and only the culprit
        reaches ``max_deaths``. Never started into or during retries, where a death
        must be the photo's alone. The photos noted (none where nothing starts)."""
        start = encoding_ahead(self.masker, [rgbs[i] for i in group])
        if start is None:
            return set()
        for i in group:
            fragments.attempt(self.db_dir, shas[i])
        start()
        return set(group)

    def __call__(self, batch: dict) -> dict:
        errors = list(batch["error"])
        counts = [-1] * len(errors)  # -1: computed before (the batch's earlier try, whose actor died after it)
        first_tries: list[int] = []
        retries: list[int] = []
        for i, sha in enumerate(batch["sha256"]):
            if errors[i] or fragment_path(self.db_dir, sha).is_file():
                continue
            # A verdict's note stays until it is committed (``_commit``): deleted now, a retry
            # of this call after another photo's death would compute it again, and two such
            # photos would take turns killing the actor for ever.
            died = fragments.deaths(self.db_dir, sha)
            errors[i] = fragments.verdict(died, self.max_deaths) or ""
            if not errors[i]:
                (retries if died else first_tries).append(i)
        # A photo an actor died on is computed alone, so one that kills its worker takes
        # itself to max_deaths, not the photos it was batched with on its first try.
        per_call = photos_per_masker_call(self.masker) if self.max_deaths > 1 else 1
        groups = [first_tries[at : at + per_call] for at in range(0, len(first_tries), per_call)]
        rgbs = list(batch["rgb"])  # the very objects an encoding ahead is started on and taken by
        noted: set[int] = set()  # photos whose attempt is noted (before their encoding ahead)
        for at, group in enumerate(groups + [[i] for i in retries]):
            for i in set(group) - noted:
                fragments.attempt(self.db_dir, batch["sha256"][i])
            if at + 1 < len(groups) and self.max_deaths > 1:  # a first try's next, as this one: ``_encode_ahead``
                noted |= self._encode_ahead(groups[at + 1], rgbs, batch["sha256"])
            outcomes = self.compute([rgbs[i] for i in group], [batch["path"][i] for i in group])
            for i, outcome in zip(group, outcomes):
                sha = batch["sha256"][i]
                try:
                    if isinstance(outcome, BaseException):
                        errors[i] = error_text(outcome)
                    else:
                        write_fragment(fragment_path(self.db_dir, sha), batch["rgb"][i].shape[:2], *outcome)
                        counts[i] = len(outcome[0])
                except Exception as exc:  # noqa: BLE001 - recorded by the committer (e.g. a full disk)
                    errors[i] = error_text(exc)
                fragments.attempts_path(self.db_dir, sha).unlink(missing_ok=True)  # lived through it
        return {
            "fs_path": batch["fs_path"],
            "path": batch["path"],
            "sha256": batch["sha256"],
            "file_stat": batch["file_stat"],
            "error": np.array(errors, object),
            "segments": np.array(counts, np.int64),
        }


# -- the driver -----------------------------------------------------------------------
def index_paths_ray(
    paths: list[str | os.PathLike],
    db_dir: str | os.PathLike,
    options: IndexOptions | None = None,
    progress: Callable[[IndexReport, str, int], None] | None = None,
    address: str | None = None,
    workers: int | None = None,
) -> IndexReport:
    """Index ``paths`` into ``db_dir`` on Ray: ``address`` None or "local" starts Ray on
    this machine, anything else joins that cluster (``ray.init(address=...)``)."""
    options = options or IndexOptions()
    db_dir = check_paths(paths, db_dir).resolve()
    options = as_built(db_dir, options)
    report = IndexReport(devices=[faiss_gpu.note(options.faiss_device)])  # refuses an impossible --faiss-device
    if options.device not in (None, "auto"):
        actor_device(options.device, gpus=1)  # refuses a device no worker can have, before anything loads
    start = time.perf_counter()
    # The identity, and missing weights said before any work; on the CPU, since the
    # models that compute run in the actors (on their GPUs) and this machine may have none.
    check_address(address)
    check_actor_precision(options.device, options.precision, address)
    files = photos_under(paths, refuse_none=is_new(db_dir, options))
    todo = photos_to_index(db_dir, options, files)  # (before this run's writer holds the catalog)
    model, masker = load_models(replace(options, device="cpu", precision="auto", compile=False))
    # Ray first: a cluster that cannot be joined ("auto" with none running) leaves no index folder behind.
    with (
        ray_for_run(address, options.device) as (device, gpus),
        Writer(db_dir, options, identity(model, masker, options), paths) as writer,
    ):
        report.share_lists_of(writer)
        fragments.drop_committed(db_dir, lambda sha: any(r.proposals_made for r in writer.store.images_with_hash(sha)))
        del model, masker
        report.devices.insert(0, actors_summary(device, gpus, options.precision, workers))
        options = decide_compile(options, device, todo, report)  # each actor compiles its own models

        def commits():
            for at in range(0, len(files), WINDOW):
                pending = _pending(files[at : at + WINDOW], writer, options, report)
                # Labelled photos of one content under several paths share its fragment: it goes
                # once each has been committed (by path: a retried task's twin counts once).
                wanted: dict[str, set[bytes]] = {}
                for row in pending:
                    wanted.setdefault(row["sha256"], set()).add(bytes(row["fs_path"]))
                for rows in _compute(pending, db_dir, replace(options, device=device), workers):
                    _commit(rows, writer, db_dir, report, wanted)
                    yield from (row["path"] for row in rows)

        # Ray Data's iterator, suspended by an error, is ended before Ray shuts down: left
        # running, its threads called into the stopped worker, and Ray ended the process
        # before the error's one line was printed (coco_ray's steps the same).
        with closing(commits()) as steps:
            writer.run(steps, report, lambda path: progress and progress(report, path, len(files)))
        report.failed_before = writer.failed_before
    report.seconds = time.perf_counter() - start
    return report


def _pending(files, writer: Writer, options: IndexOptions, report: IndexReport) -> list[dict]:
    """Skip unread what is as the catalog last read it (its stat, as the sequential
    indexer does: ``KnownImages``); hash the rest on Ray's CPU workers, record what
    cannot be read, skip what the catalog has, and keep the rest (in walk order, so
    commits follow it). The catalog is asked ``BATCH`` paths a query."""
    import ray.data

    readable = []
    for at in range(0, len(files), BATCH):
        part = files[at : at + BATCH]
        writer.known.prefetch([f.key for f in part if f.error is None])
        for found in part:
            if found.error is not None:
                writer.fail(found.key, found.path, None, found.error, report)
                continue
            key = found.key
            # A copy, or a file that failed after its read, skipped unread too (where ``skip``
            # finds no photo the copy repeats any more, it is hashed below as any other).
            stat, recorded = writer.known.unchanged(
                key, found.fs_path, failed_too=not options.retry_failed, copies_too=True, max_pixels=options.max_pixels
            )
            if recorded is not None and writer.skip(key, recorded, path=found.path, file_stat=stat):
                report.skipped += 1
            else:
                readable.append({"fs_path": key, "path": found.path})
                writer.known.forget(key)  # asked again with the hashes: memory stays a batch's
    if not readable:
        return []
    hashed = ray.data.from_items(readable).map_batches(partial(hash_files, max_bytes=options.max_bytes), batch_size=16)
    pending: list[dict] = []
    seen: set[str] = set()
    rows = iter(hashed.iter_rows())
    while part := list(islice(rows, BATCH)):
        writer.known.prefetch([bytes(row["fs_path"]) for row in part])
        for row in part:
            key, path, sha, stat = bytes(row["fs_path"]), row["path"], row["sha256"], row["file_stat"] or None
            if row["error"]:
                writer.fail(key, path, None, worker_error(row["error"]), report)
            elif writer.skip(key, sha, coming=seen, path=path, file_stat=stat):
                report.skipped += 1  # done, or the same pixels under another path
            else:
                seen.add(sha)
                pending.append({"fs_path": key, "path": path, "sha256": sha, "file_stat": row["file_stat"]})
    order = {bytes(f["fs_path"]): i for i, f in enumerate(readable)}
    return sorted(pending, key=lambda r: order[r["fs_path"]])


def _compute(pending: list[dict], db_dir: Path, options: IndexOptions, workers: int | None):
    """Groups of computed images' rows (an actor call's each), in ``pending``'s order:
    those whose fragment a killed run left behind first, then the rest through decode
    and the actor pool."""
    fragments.forget_attempts(db_dir)
    ready = [{**r, "error": "", "segments": -1} for r in pending if usable_leftover(fragment_path(db_dir, r["sha256"]))]
    computed = {r["sha256"] for r in ready}
    todo = [r for r in pending if r["sha256"] not in computed]  # before ``ready``'s commits delete their fragments
    yield from (ready[at : at + LEFT_PER_COMMIT] for at in range(0, len(ready), LEFT_PER_COMMIT))
    if not todo:
        return
    # Each block as it comes (an actor call's photos: no wait for more), a transaction each.
    for block in decoded_and_computed(todo, db_dir, options, workers).iter_batches(
        batch_size=None, batch_format="numpy"
    ):
        columns = {name: values.tolist() for name, values in block.items()}
        yield [dict(zip(columns, values)) for values in zip(*columns.values())]


def decoded_and_computed(todo: list[dict], db_dir: Path, options: IndexOptions, workers: int | None):
    """The dataset of ``todo``'s photos decoded and computed by the actors. Ray fuses
    the decoding into a CPU's actor (its cores are the models'; a codec's crash is then
    the actor's death, counted as one); a GPU actor's resources differ from the CPU
    tasks', so there the photos are decoded by CPU tasks apart, ahead of the card (tested)."""
    import ray
    import ray.data

    per_call = photos_per_call(options, int(ray.cluster_resources().get("GPU", 0)) if options.device == "cuda" else 0)
    decode = partial(decode_files, max_bytes=options.max_bytes, max_pixels=options.max_pixels, db_dir=db_dir)
    decoded = ray.data.from_items(todo).map_batches(decode, batch_size=per_call)
    return through_actors(decoded, SegmentWorker, options, db_dir, workers, per_call)


def photos_per_call(options: IndexOptions, gpus: int) -> int:
    """Photos an actor computes a call, and the driver commits in one transaction: an
    ``--encoder-batch`` group on a CPU; on a GPU ``GROUPS_PER_CALL`` of them, so that
    SAM's encoder runs a group ahead within the call (``SegmentWorker._encode_ahead``)."""
    group = int(options.masker_options.get("encoder_batch", 4 if gpus else 1))
    return group * (GROUPS_PER_CALL if gpus else 1)


def through_actors(dataset, worker: type, options: IndexOptions, db_dir: Path, workers: int | None, per_call: int):
    """``dataset`` through a pool of ``worker`` actors (one GPU each where the cluster
    has them and ``options.device`` is cuda; else a share of the CPUs each), in order."""
    import ray
    import ray.data

    gpus = int(ray.cluster_resources().get("GPU", 0)) if options.device == "cuda" else 0
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = workers or max(1, gpus or cpus // 2)
    per_actor = max(1, cpus // actors) if not gpus else 1
    # One logical CPU per actor (more would leave none for decoding: a stall), but as
    # many torch threads as its share of the machine's cores.
    return dataset.map_batches(
        worker,
        fn_constructor_kwargs={"options": options, "db_dir": str(db_dir), "threads": per_actor},
        batch_size=per_call,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else 0,
        num_cpus=1,
    )


def _commit(
    rows: list[dict], writer: Writer, db_dir: Path, report: IndexReport, wanted: dict[str, set[bytes]] | None = None
) -> None:
    """An actor call's photos in one transaction (each failure in its own), then their
    fragments deleted: each once no row ``wanted`` still counts needs it (labelled
    photos of one content, each a photo of its own, share it)."""
    photos: list[PhotoWrite] = []
    keys: set[bytes] = set()  # this group's photos, paths and contents
    shas: set[str] = set()
    for row in rows:
        key, path, sha = bytes(row["fs_path"]), row["path"], row["sha256"]
        # A retried task's twin (also in this group: the path's old record would not say so), the
        # same pixels committed meanwhile, or earlier in this group.
        if key in keys or writer.skip(key, sha, coming=shas):
            report.skipped += 1
        elif row["error"]:
            writer.fail(key, path, sha, worker_error(row["error"]), report, file_stat=row["file_stat"] or None)
        else:
            hw, segments, embeddings, _ = read_fragment(fragment_path(db_dir, sha))
            photos.append(PhotoWrite(key, path, sha, hw, segments, embeddings, file_stat=row["file_stat"] or None))
            keys.add(key)
            shas.add(sha)
    if photos:
        writer.commit(photos, report)
    for row in rows:  # after the commit: a kill before it leaves the fragments for the next run
        waiting = wanted.get(row["sha256"]) if wanted is not None else None
        if waiting is not None:
            waiting.discard(bytes(row["fs_path"]))
            if waiting:
                continue
        fragment_path(db_dir, row["sha256"]).unlink(missing_ok=True)
        fragments.attempts_path(db_dir, row["sha256"]).unlink(missing_ok=True)  # a WorkerDied verdict's note


# -- shards filled in parallel ----------------------------------------------------------
def rebuild_on_ray(store, dim: int, factory: str, device: str | None = "cpu", shard_size: int = 0):
    """``vectors.rebuild`` with the shards filled by Ray tasks: the index is trained
    once here (a bounded sample), and each task fills a copy of it with its shard's
    id range, read from the store and the embedding files every machine can reach."""
    import faiss
    import ray

    from . import index_kinds, vectors

    ids = store.segment_ids()
    count = int((ids.max() - 1) // shard_size) + 1 if shard_size and len(ids) else 1
    if count == 1:  # one shard: nothing to spread
        return vectors.rebuild(store, dim, factory, device, shard_size)
    template = index_kinds.new_index(dim, factory)
    vectors._train_if_needed(template, store, device)
    trained = ray.put(faiss.serialize_index(template))
    fill = ray.remote(_fill_shard)
    parts = ray.get([fill.remote(trained, store.url, str(store.folder), number, shard_size) for number in range(count)])
    return vectors.Vectors([faiss.deserialize_index(part) for part in parts], device, shard_size)


def _fill_shard(trained, url: str, folder: str, number: int, shard_size: int):
    """A Ray task: shard ``number`` (ids number * shard_size + 1 ...), serialized."""
    import faiss

    from .store import Store

    store = Store(url, read_only=True, folder=folder)
    try:
        index = faiss.deserialize_index(trained)
        ids = store.segment_ids_between(number * shard_size + 1, (number + 1) * shard_size)
        for batch_ids, batch in store.embeddings(ids):
            index.add_with_ids(batch, batch_ids)
        return faiss.serialize_index(index)
    finally:
        store.close()
