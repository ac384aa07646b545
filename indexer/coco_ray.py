"""``index_coco_ray``: a labelled dataset indexed by its own masks (``index IMAGES
--coco FILE.json --ray``), the same as ``index_coco`` but with the photos hashed on
Ray's CPU workers and the annotations embedded by a pool of actors (one GPU each
where the cluster has them):

    entries (driver) -> read + hash (CPU tasks) -> plan each photo (driver): what the
      index holds of it decides; a relabel or a removal is committed at once
      -> photos with masks to embed -> decode (CPU tasks) -> check the masks + embed (actors)
      -> a fragment file per photo -> the driver, the single committer

A photo the index holds with the same content is planned against its stored
annotations (no pixels read unless a mask is new; not read at all where its stat is
the one recorded when it was last read whole), as ``index_coco`` does; any other
is sized, checked and embedded by its actor. Nothing is lost or doubled when a part
dies: the catalog is the truth, so a re-run plans again from what was committed (the
fragments a killed run left are dropped, not trusted: the file may have changed)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import replace
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np

from usesearch.errors import AnnotationError
from usesearch.io.coco_dataset import (
    Annotation,
    CocoDataset,
    ImageEntry,
    Problem,
    as_dataset,
    refuse_when_no_photo,
)
from usesearch.io.coco_masks import size_fault
from usesearch.io.files import Found

from . import faiss_gpu, fragments
from .coco_plan import (
    CocoReport,
    Plan,
    check_split,
    commit_photo,
    embed_new,
    fail_photo,
    failed_as_before,
    finish_pass,
    located_entries,
    plan_photo,
    record,
    stored_state_here,
    unchanged_here,
    wrong_size,
)
from .distributed import through_actors
from .folder import check_paths, is_new
from .fragments import FRAGMENTS, error_text, read_fragment, worker_error, write_fragment
from .index_checks import as_built
from .options import IndexOptions, IndexReport
from .pipeline import identity, load_embedder
from .ray_cluster import actor_device, actors_summary, check_actor_precision, check_address, ray_for_run
from .ray_reads import decode_files, hash_files
from .writer import Writer


def fragment_of(db_dir: str | os.PathLike, number: int, sha256: str, split: str) -> Path:
    """Beside the masker runs' fragments, under a name of its own (a photo's annotations
    of a split are not its proposals), one per entry: two entries may name photos of
    the same content."""
    tag = hashlib.sha256(split.encode()).hexdigest()[:12]
    return Path(db_dir) / FRAGMENTS / f"coco-{tag}-{number}-{sha256[:16]}.npz"


class AnnotationWorker:
    """A Ray actor: the embedder, loaded once, turns photos and their annotations into
    fragment files (segment rows, embeddings, and the faults found in the masks)."""

    def __init__(self, options: IndexOptions, db_dir: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.options, self.db_dir = options, db_dir
        self.model = load_embedder(options)

    def __call__(self, batch: dict) -> dict:
        errors = list(batch["error"])
        for i, rgb in enumerate(batch["rgb"]):
            sha = str(batch["sha256"][i])
            errors[i] = errors[i] or fragments.verdict(fragments.deaths(self.db_dir, sha)) or ""  # as distributed's
            if errors[i]:
                continue  # not read or not decoded: recorded by the committer
            try:
                with fragments.attempted(self.db_dir, sha):
                    self._one(rgb, batch, i)
            except Exception as exc:  # noqa: BLE001 - recorded by the committer
                errors[i] = error_text(exc)
        return {
            "fs_path": batch["fs_path"],
            "path": batch["path"],
            "sha256": batch["sha256"],
            "entry": batch["entry"],
            "error": np.array(errors, object),
        }

    def _one(self, rgb: np.ndarray, batch: dict, i: int) -> None:
        hw = rgb.shape[:2]
        height, width = int(batch["height"][i]), int(batch["width"][i])
        entry = ImageEntry(
            0,
            str(batch["file_name"][i]),
            height or None,
            width or None,
            [Annotation(a, c, bool(crowd), s) for a, c, crowd, s in json.loads(batch["annotations"][i])],
        )
        split, fault = str(batch["split"][i]), size_fault(entry, hw)
        segments: list[dict] = []
        embeddings = np.zeros((0, 0), np.float32)
        problems = [fault] if fault is not None else []
        if fault is None:
            plan = plan_photo(entry, hw, {})
            problems = plan.problems
            if plan.new:
                segments, found = embed_new(rgb, str(batch["path"][i]), plan.new, self.model, IndexReport(), split)
                embeddings = np.asarray(found)
        write_fragment(
            fragment_of(self.db_dir, int(batch["entry"][i]), str(batch["sha256"][i]), split),
            hw,
            segments,
            embeddings,
            problems=[[annotation_id, error.kind, str(error)] for _, annotation_id, error in problems],
            sized=fault is None,
        )


def index_coco_ray(
    paths: list[str | os.PathLike],
    coco_file: str | os.PathLike | CocoDataset,
    db_dir: str | os.PathLike,
    options: IndexOptions | None = None,
    split: str | None = None,
    progress: Callable[[IndexReport, str, int], None] | None = None,
    address: str | None = None,
    workers: int | None = None,
    replace_split: bool = False,
) -> CocoReport:
    """``index_coco`` on Ray: ``address`` None or "local" starts Ray on this machine,
    anything else joins that cluster. A file that is not COCO is refused first."""
    options = options or IndexOptions()
    dataset = as_dataset(coco_file)  # before anything: a wrong file must not leave an index folder behind
    split = check_split(dataset.path.stem if split is None else split)
    db_dir = check_paths(paths, db_dir).resolve()
    refuse_when_no_photo(dataset, [os.fspath(p) for p in paths], new_index=is_new(db_dir, options))
    options = as_built(db_dir, options)
    report = CocoReport(devices=[faiss_gpu.note(options.faiss_device)], split=split)
    if options.device not in (None, "auto"):
        actor_device(options.device, gpus=1)  # refuses a device no worker can have, before anything loads
    check_address(address)
    check_actor_precision(options.device, options.precision, address)
    start = time.perf_counter()
    model = load_embedder(replace(options, device="cpu", precision="auto"))  # the identity; the actors compute
    folders = [os.fspath(p) for p in paths]
    # Ray first: a cluster that cannot be joined ("auto" with none running) leaves no index folder behind.
    with (
        ray_for_run(address, options.device) as (device, gpus),
        Writer(db_dir, options, identity(model, None, options), paths) as writer,
    ):
        del model
        report.devices.insert(0, actors_summary(device, gpus, options.precision, workers))
        for left in (db_dir / FRAGMENTS).glob("coco-*.npz"):  # a killed run's: planned again from the catalog
            left.unlink()
        fragments.forget_attempts(db_dir)
        report.annotations_lost = writer.store.annotations_lost
        report.proposals_lost = writer.store.proposals_lost
        report.moved = writer.moved
        report.replacing = replace_split  # the others forgotten once the pass is whole (finish_pass)
        writer.store.forget_problems(split, str(dataset.path))  # recorded afresh below: listed once
        writer.store.begin_pass(split, str(dataset.path))  # ended by a whole pass (``finish_pass``)
        record(writer, report, split, dataset, dataset.problems)
        located, listed = located_entries(dataset, folders, writer, report, split)
        steps = _steps(
            located, listed, dataset, writer, report, split, db_dir, replace(options, device=device), workers
        )
        total = len(dataset.images)
        with closing(steps):  # ended before Ray shuts down (``index_paths_ray``)
            writer.run(steps, report, lambda path: progress and progress(report, path, total))
    report.seconds = time.perf_counter() - start
    return report


def _steps(
    located: list[tuple[ImageEntry, Found]],
    listed: list[bytes],
    dataset: CocoDataset,
    writer: Writer,
    report: CocoReport,
    split: str,
    db_dir: Path,
    options: IndexOptions,
    workers: int | None,
) -> Generator[str, None, None]:
    """Each photo planned (and, where nothing is to embed, committed) as its hash comes
    back, then each embedded photo committed in the entries' order."""
    import ray.data

    if not located:
        finish_pass(writer, report, split, dataset, located, listed)
        return
    unread, rows, stats = _unread(located, writer, options)
    hashing = partial(hash_files, max_bytes=options.max_bytes)
    hashed = ray.data.from_items(rows).map_batches(hashing, batch_size=16).iter_rows() if rows else ()
    jobs: list[dict] = []
    plans: dict[int, Plan] = {}
    for row in chain(unread, hashed):
        number = int(row["entry"])
        entry, found = located[number]
        if row["error"]:
            fail_photo(writer, report, entry, found, None, worker_error(row["error"]))
            yield entry.file_name
            continue
        sha, read = row["sha256"], not row.get("unread")
        existing, stored, hw = stored_state_here(writer, found, sha, split, stats.get(number))
        if failed_as_before(existing, read, report):
            yield entry.file_name
            continue
        annotations: list = [[a.id, a.category, a.iscrowd, a.mask_source()] for a in entry.annotations]
        if hw is None and stored:  # the same content stored without its size: embedded again in place
            ours = {a.id for a in entry.annotations} if report.shared_with else stored.keys()
            plans[number] = Plan(drop=[old.segment_id for a, old in stored.items() if a in ours])
        if hw is not None:  # the same content, sized: planned here, like index_coco
            fault = size_fault(entry, hw)
            if fault is not None:
                wrong_size(writer, report, split, dataset, found, existing, fault, entry)
                yield entry.file_name
                continue
            plan = plan_photo(entry, hw, stored, keep_absent=bool(report.shared_with))
            record(writer, report, split, dataset, plan.problems)
            if plan.empty:
                report.skipped += 1
                if read:
                    writer.known.read_as_recorded(existing, sha, stats[number])
            elif not plan.new:  # a relabel or a removal: no pixels, no actor
                commit_photo(writer, found, sha, hw, plan, [], None, report, file_stat=stats[number])
            if not plan.new:
                yield entry.file_name
                continue
            plans[number] = plan
            annotations = [[a.id, a.category, a.iscrowd, mask] for a, mask in plan.new]  # checked already
        jobs.append(
            {
                "fs_path": found.key,
                "path": found.path,
                "sha256": sha,
                "entry": number,
                "error": "",
                "file_name": entry.file_name,
                "height": entry.height or 0,
                "width": entry.width or 0,
                "split": split,
                "annotations": json.dumps(annotations),
            }
        )
    if jobs:
        jobs.sort(key=lambda job: job["entry"])  # committed in the entries' order, as index_coco
        decode = partial(decode_files, max_bytes=options.max_bytes, max_pixels=options.max_pixels, db_dir=str(db_dir))
        decoded = ray.data.from_items(jobs).map_batches(decode, batch_size=1)  # on CPU tasks, ahead
        computed = through_actors(decoded, AnnotationWorker, options, db_dir, workers, per_call=1)
        for row in computed.iter_rows():
            number = int(row["entry"])
            entry, found = located[number]
            _commit(row, entry, found, plans.get(number), stats[number], writer, report, split, dataset, db_dir)
            yield entry.file_name
    finish_pass(writer, report, split, dataset, located, listed)


def _unread(
    located: list[tuple[ImageEntry, Found]], writer: Writer, options: IndexOptions
) -> tuple[list[dict], list[dict], dict[int, str | None]]:
    """(rows of the photos whose stat is the one recorded when they were last read whole:
    their recorded SHA-256, not read, as ``index_coco`` skips them; rows of the rest, to
    hash; each photo's stat by entry, taken here, before any read of it: what a commit
    records for the next run). A photo skipped unread whose mask is new is read by its
    decode task after all, which refuses content other than the recorded one."""
    unread, rows, stats = [], [], {}
    for number, (_, found) in enumerate(writer.known.prefetching(located, lambda job: job[1].key)):
        stats[number], recorded = unchanged_here(writer, found, options)
        writer.known.forget(found.key)
        if recorded is None:
            rows.append({"fs_path": found.key, "path": found.path, "entry": number})
        else:
            unread.append({"entry": number, "sha256": recorded, "error": "", "unread": True})
    return unread, rows, stats


def _commit(
    row: dict,
    entry: ImageEntry,
    found: Found,
    plan: Plan | None,
    file_stat: str | None,
    writer: Writer,
    report: CocoReport,
    split: str,
    dataset: CocoDataset,
    db_dir: Path,
) -> None:
    """One embedded photo committed as ``index_coco`` commits it: with the plan made
    from its stored annotations, or (a photo new or changed) with its worker's."""
    sha = row["sha256"]
    fragment = fragment_of(db_dir, int(row["entry"]), sha, split)
    if row["error"]:
        pending = None if plan is None else len(plan.new)  # (None: a photo new or changed, planned by its worker)
        fail_photo(writer, report, entry, found, sha, worker_error(row["error"]), file_stat, pending)
        fragment.unlink(missing_ok=True)
        fragments.attempts_path(db_dir, sha).unlink(missing_ok=True)  # a WorkerDied verdict's note
        return
    hw, segments, embeddings, found_there = read_fragment(fragment)
    problems: list[Problem] = [
        (entry.file_name, a, AnnotationError(kind, message)) for a, kind, message in found_there["problems"]
    ]
    if not found_there["sized"]:  # the entry's size is not the photo's
        existing = writer.store.image_by_path(found.key)
        wrong_size(writer, report, split, dataset, found, existing, problems[0], entry)
    else:
        record(writer, report, split, dataset, problems)
        plan = plan or Plan()  # a photo new or changed: nothing stored to drop or relabel
        if not segments and plan.empty:
            report.skipped += 1  # every mask broken: nothing to store, as index_coco
        else:
            commit_photo(writer, found, sha, hw, plan, segments, embeddings if segments else None, report, file_stat)
    fragment.unlink(missing_ok=True)  # after the commit: a kill before it leaves it for the next run to drop
