"""CLI wiring for inspecting and rebuilding an index: info, failures, reindex, calibrate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from usesearch.cli import options as opts
from usesearch.io.files import PAST_LIMIT, one_line

app = opts.Typer()


@app.command()
@opts.user_errors
def info(
    db: opts.DbOpt,
    as_json: opts.JsonOpt = False,
    db_url: opts.DbUrlOpt = None,
    faiss_device: opts.FaissDeviceOpt = None,
) -> None:
    """Images done/failed, segments, model, index type, sizes on disk, and where FAISS runs."""
    from usesearch.errors import EmbeddingsLostError
    from usesearch.indexer import SegmentIndex
    from usesearch.indexer.folder import check_db_dir, open_store
    from usesearch.indexer.index_stats import unloaded_stats

    try:
        index = SegmentIndex.open(db, db_url=db_url, faiss_device=faiss_device)
        store, stats = index.store, index.stats(check_files=True)
    except EmbeddingsLostError as lost:  # FAISS must be rebuilt from them: the rest is told, and the repair
        folder = check_db_dir(db).absolute()
        store = open_store(folder, db_url, read_only=True)
        stats = unloaded_stats(store, folder, lost)
    stats |= store.label_summary()
    if as_json:
        print(json.dumps(stats, indent=1, default=str))
        return
    by_class = stats.pop("annotations_by_class")
    stats.pop("calibration", None)  # its curve: with --json; the line is "recall"
    width = max(map(len, [*stats, *(f"split {name}" for name in by_class)]))
    for key, value in stats.items():
        opts.console.print(f"{key:>{width}}: {opts.shown(value)}", soft_wrap=True)
    for split_name, counts in by_class.items():  # a line per split: its classes, most annotated first
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        opts.console.print(f"{'split ' + split_name:>{width}}: " + ", ".join(f"{name} {n}" for name, n in ranked))
    for unfinished in stats["splits_unfinished"]:
        opts.console.print(
            f"{unfinished}: an `index --coco` run stopped before its end, and the split holds part of the file's "
            "changes; the same command finishes it",
            style="yellow",
        )
    if stats["embeddings_lost"]:
        opts.console.print(
            f"{sum(stats['embeddings_lost'].values())} segment(s) lost their embedding with a file gone or cut short: "
            f"`usesearch index PATHS {opts.index_flags(db, db_url)} --repair` embeds them again",
            style="yellow",
        )
    if stats["faiss_files_unread"]:
        opts.console.print(
            f"{stats['faiss_files_unread']} FAISS shard file(s) lie past a missing one and are not read (their "
            f"segments are searched from the embedding files): `usesearch reindex {opts.index_flags(db, db_url)}` "
            "writes the shards again and removes the rest",
            style="yellow",
        )


@app.command()
@opts.user_errors
def failures(db: opts.DbOpt, db_url: opts.DbUrlOpt = None, as_json: opts.JsonOpt = False) -> None:
    """Each file that failed to index, with its reason; then each annotation of a labelled dataset
    (--coco) that could not be indexed, with its split, photo, id and reason."""
    from usesearch.indexer.folder import check_db_dir, open_store
    from usesearch.indexer.records import DONE

    store = open_store(check_db_dir(db), db_url, read_only=True)
    if as_json:
        files = [
            {
                "path": r.path,
                "error": r.error_class,
                "message": r.error_message,
                "attempts": r.attempts,
                "kept": r.status == DONE,  # indexed before the failure: its segments are kept
            }
            for r in store.failures()
        ]
        annotations = [
            {
                "coco_file": p.coco_file,
                "split": p.split,
                "file_name": p.file_name,
                "annotation_id": p.annotation_id,
                "kind": p.kind,
                "message": p.message,
            }
            for p in store.annotation_problems()
        ]
        print(json.dumps({"files": files, "annotations": annotations}, indent=1))
        return
    failed, problems = store.failures(), store.annotation_problems()
    if not failed and not problems:
        opts.console.print("no file failed to index and no annotation was refused")
    for record in failed:
        kept = "; indexed before: its segments are kept" if record.status == DONE else ""
        reason = opts.reason_beside(record.path, record.error_message or "")
        why = f"{record.error_class}: {reason} (attempts: {record.attempts}{kept})"
        _data_line(record.path, why)
    for problem in problems:
        where = problem.file_name or Path(problem.coco_file).name
        annotation = f" annotation {problem.annotation_id}" if problem.annotation_id is not None else ""
        _data_line(where + annotation, f"[{problem.split}] {problem.kind}: {problem.message}")
    past = sum(PAST_LIMIT in (record.error_message or "") for record in failed)
    if past:  # on stderr: the lines above stay one file each for scripts
        opts.err_console.print(
            f"{past} of them refused for their size: `usesearch index PATHS {opts.index_flags(db, db_url)} "
            "--max-pixels N --max-bytes N` with the limits raised reads them again"
        )


def _data_line(*fields: str) -> None:
    """Tab-separated fields, a line each however long (``cut -f1`` gives the files):
    print, since rich turns tabs into spaces; a control character in a name (a newline)
    spelt out, since it would split the line."""
    print("\t".join(map(one_line, fields)))


@app.command("reindex")
@opts.user_errors
def reindex_cmd(
    db: opts.DbOpt,
    factory: opts.FactoryOpt = None,
    db_url: opts.DbUrlOpt = None,
    faiss_device: Annotated[
        opts.FaissDeviceOpt,
        opts.Formerly(
            "--device",
            note="`reindex --device` is now `--faiss-device` (where FAISS builds and searches)",
        ),
    ] = None,
    shard_size: opts.ShardSizeOpt = None,
    ray: opts.RayOpt = None,
    recall_target: opts.RecallTargetOpt = None,
    latency_budget: opts.LatencyBudgetOpt = None,
) -> None:
    """Rebuild the FAISS file from the embedding files (and choose its type again); a compressed index
    is then calibrated: its recall measured and its search effort chosen (shown by `info`)."""
    from usesearch.indexer import reindex

    if ray is None:
        done = reindex(
            db, factory, db_url, faiss_device, shard_size, recall_target=recall_target, latency_budget_ms=latency_budget
        )
        opts.console.print(f"rebuilt FAISS index with {done.vectors} vectors")
    else:
        from usesearch.indexer.distributed import rebuild_on_ray
        from usesearch.indexer.ray_cluster import check_address, ray_session

        check_address(ray)
        with ray_session(ray):
            done = reindex(
                db,
                factory,
                db_url,
                faiss_device,
                shard_size,
                build=rebuild_on_ray,
                recall_target=recall_target,
                latency_budget_ms=latency_budget,
            )
        opts.console.print(f"rebuilt FAISS index with {done.vectors} vectors, its shards filled on Ray")
    if done.calibration is not None:  # (what `info` shows: said where it was measured)
        _say_calibrated(done.calibration)
    if done.calibration_note:
        opts.console.print(done.calibration_note)


@app.command()
@opts.user_errors
def calibrate(
    db: opts.DbOpt,
    db_url: opts.DbUrlOpt = None,
    recall_target: opts.RecallTargetOpt = None,
    latency_budget: opts.LatencyBudgetOpt = None,
    faiss_device: opts.FaissDeviceOpt = None,
) -> None:
    """Measure a compressed index's recall again and choose its search effort, without a rebuild:
    when it was measured on a busy machine, on the machine that serves it, or for another target."""
    from usesearch.indexer import recalibrate

    _say_calibrated(recalibrate(db, db_url, recall_target, latency_budget_ms=latency_budget, faiss_device=faiss_device))


def _say_calibrated(measured) -> None:
    opts.console.print(f"calibrated in {measured.seconds:.0f} s: {measured.describe()}")
