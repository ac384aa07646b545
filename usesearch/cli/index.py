"""CLI wiring for building an index: index, and prune (also `index --prune`); `upkeep.py`
has the commands that inspect and rebuild one.

With ``search``, the CLI modules that import ``indexer``: the CLI joins the stages.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from usesearch.cli import index_output as said
from usesearch.cli import options as opts
from usesearch.cli import sam_options
from usesearch.cli.photo_limits import PhotoLimits, say_past_limits, with_photo_limits
from usesearch.errors import UsesearchError
from usesearch.io.files import one_line
from usesearch.masks.settings import SamSettings
from usesearch.reports import counted

if TYPE_CHECKING:
    from usesearch.indexer.options import IndexReport

app = opts.Typer()


@app.command()
@opts.user_errors
@sam_options.with_sam_settings
@with_photo_limits
def index(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively).")],
    db: opts.DbOpt,
    preset: opts.PresetOpt = None,
    embedder: opts.EmbedderOpt = None,
    head: opts.HeadOpt = None,
    masker: opts.MaskerOpt = None,
    coco: opts.MaybeCocoOpt = None,
    split: opts.SplitOpt = None,
    replace_split: Annotated[
        bool,
        typer.Option(
            "--replace-split",
            help="With --coco: this file becomes the split's only one; the annotations of the split's other files "
            "(one indexed under a wrong --split, one since moved) go.",
        ),
    ] = False,
    factory: opts.FactoryOpt = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try failed images again.")] = False,
    device: opts.DeviceOpt = None,
    precision: opts.PrecisionOpt = "auto",
    faiss_device: opts.FaissDeviceOpt = None,
    db_url: opts.DbUrlOpt = None,
    shard_size: opts.ShardSizeOpt = None,
    recall_target: opts.RecallTargetOpt = None,
    prune_gone: Annotated[
        bool,
        typer.Option("--prune", help="Also remove images under PATHS whose files are gone since they were indexed."),
    ] = False,
    ray: opts.RayOpt = None,
    workers: Annotated[
        Optional[int], typer.Option(min=1, help="With --ray: model actors (default: one per GPU, else one per 2 CPUs).")
    ] = None,
    compile_models: Annotated[
        Optional[bool],
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile SAM and the backbones: tens of seconds to minutes of compiling first. "
            "Default on a GPU: all from 1,000 photos, SAM's decoder and scoring from 100, nothing under; "
            "a CPU compiles SAM's scoring where it pays.",
            show_default=False,
        ),
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Check every embedding row's checksum; photos with damaged rows are embedded again."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's report as JSON on stdout (status lines go to stderr).")
    ] = False,
    *,
    sam: SamSettings,
    limits: PhotoLimits,
) -> None:
    """Segment and embed every image under PATHS into the index at --db (incremental, resumable).
    With --coco FILE.json (and no --masker coco), a labelled dataset: each annotation becomes a segment
    with its id, class and split; with --masker too, the masker's proposals of the same photos follow."""
    reports: dict[str, IndexReport] = {}  # what --json prints: "annotations" and/or "proposals"

    def run() -> None:
        from tqdm import tqdm

        from usesearch.indexer.folder import check_paths, is_new
        from usesearch.indexer.options import IndexOptions

        opts.refuse_other_kind(db, "an index")
        folders: list[str | os.PathLike] = list(paths)
        check_paths(folders, db)  # a typo said before the models' libraries load (seconds)
        masker_options = sam.given()
        labelled = coco is not None and masker != "coco"  # --masker coco: the file's masks are proposals
        if split is not None and not labelled:
            raise UsesearchError(
                "--split names a labelled dataset's split: it goes with --coco FILE.json"
                + (", not --masker coco" if masker == "coco" else "")
            )
        if replace_split and not labelled:
            raise UsesearchError("--replace-split replaces a labelled dataset's split: it goes with --coco FILE.json")
        if labelled and masker is None and masker_options:
            raise UsesearchError(
                f"{', '.join(map(SamSettings.flag, sorted(masker_options)))}: SAM's settings need a masker run "
                "(--masker sam) beside --coco"
            )
        if coco is not None and not labelled:
            masker_options["masks_json"] = str(coco)
        if labelled:
            from usesearch.io.coco_dataset import read_coco

            assert coco is not None
            # Read first: a file that is not COCO is said at once, not once the model libraries have loaded (4 s).
            coco_read = read_coco(coco)
        options = IndexOptions(
            preset=preset,
            embedder=embedder,
            head=str(head) if head else None,
            masker=masker,
            masker_options=masker_options,
            device=device,
            precision=precision,
            faiss_device=faiss_device,
            factory=None if factory == "auto" else factory,  # (automatic: as the default)
            recall_target=recall_target,
            compile=compile_models,
            repair=repair,
            retry_failed=retry_failed,
            max_pixels=limits.max_pixels,
            max_bytes=limits.max_bytes,
            db_url=db_url,
            shard_size=shard_size,
        )
        if is_new(Path(db), options):
            if coco is None:
                _refuse_empty_folders(folders)
            if head is None:  # (an index's own preset, or a head's, is known once they are read)
                from usesearch.indexer.folder import check_catalog_kind
                from usesearch.models.weights import refuse_missing_clip

                check_catalog_kind(Path(db), db_url)  # (a catalog on a server, named without it: that first)
                refuse_missing_clip(preset)
                if not labelled or masker is not None:  # the masker and SAM's settings, before torch's import
                    from usesearch.masks.registry import check_masker_for

                    check_masker_for(masker, preset, masker_options)
        else:  # the index's model, masker and settings checked against the run's, before torch's import
            from usesearch.indexer.index_checks import as_built

            as_built(Path(db), options)
        bar = tqdm(unit="img", dynamic_ncols=True, disable=None)
        start = time.perf_counter()

        def progress(report, path, total):
            bar.total = total
            bar.update(report.done + report.skipped + report.failed - bar.n)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(seg_s=f"{report.segments / elapsed:.1f}", failed=report.failed)

        if workers is not None and ray is None:
            raise UsesearchError("--workers applies to --ray runs only")
        if labelled:
            labelled_options = replace(options, masker_options={})
            if ray is not None:
                from usesearch.indexer.coco_ray import index_coco_ray

                labels = index_coco_ray(
                    folders, coco_read, db, labelled_options, split, progress, ray, workers, replace_split
                )
            else:
                from usesearch.indexer.coco_index import index_coco

                labels = index_coco(folders, coco_read, db, labelled_options, split, progress, replace_split)
            del coco_read  # (a large dataset's annotations: not held through a masker run that follows)
            reports["annotations"] = labels
            bar.close()
            said.print_labelled(labels, db, db_url, masker_follows=masker is not None)
            if labels.interrupted:
                raise typer.Exit(130)
            if masker is None:
                if prune_gone:
                    _prune(db, folders, options)
                opts.exit_if_all_failed(labels.done, labels.skipped, labels.failed, "photo")
                return
            bar = tqdm(unit="img", dynamic_ncols=True, disable=None)
        if ray is not None:
            from usesearch.indexer.distributed import index_paths_ray

            report = index_paths_ray(folders, db, options, progress, address=ray, workers=workers)
        else:
            from usesearch.indexer import index_paths

            report = index_paths(folders, db, options, progress)
        reports["proposals"] = report
        bar.close()
        pruned: set[str] = set()
        if prune_gone and not report.interrupted:
            pruned = _prune(db, folders, options)
        state = "interrupted; finished work is kept" if report.interrupted else "finished"
        opts.console.print(
            f"{state}: {counted(report.done, 'image')} indexed, {report.skipped} skipped, {report.failed} failed, "
            f"{counted(report.segments, 'segment')} in {report.seconds:.1f} s"
        )
        if repair:
            opts.console.print(
                f"  repair: {counted(len(report.repaired), 'photo')} had damaged embedding rows and were embedded again"
            )
            if report.annotations_dropped:
                opts.console.print(
                    f"  repair: {report.annotations_dropped} annotations had damaged rows and were removed: "
                    "`usesearch index PATHS --coco FILE.json` embeds them again"
                )
            for path in report.unrepaired[:10]:
                opts.console.print(f"  damaged but not under the folders given, so left as it is: {path}")
            for path in [path for path in report.damaged_gone if path not in pruned][:10]:  # (--prune's: said)
                opts.console.print(
                    f"  damaged, and its file is gone, so left as it is (`usesearch prune` removes it): {path}"
                )
        for line in report.devices if report.done or report.failed else []:  # (a run that computed nothing loaded none)
            opts.console.print(f"  {line}")
        if report.calibrated is not None:  # (new, or grown past its last: its searches' defaults changed)
            opts.console.print(f"  calibrated: {report.calibrated.describe()}")
        if report.calibration_note:
            opts.console.print(f"  {report.calibration_note}")
        opts.say_failures(report.failures)
        say_past_limits(report.failures)
        said.say_moved_and_copies(report)
        said.say_annotations_lost(report)
        said.say_unread(report, db, db_url)
        if report.done and not report.segments:
            said.say_no_masks(report.done, db, db_url)
        if not prune_gone and not report.interrupted:
            said.say_gone(db, folders, db_url)
        said.say_fragments_waiting(db, ray is not None, report.interrupted)
        if report.interrupted:
            raise typer.Exit(130)
        before = report.failed_before  # a re-run of photos that all failed before is no success either
        opts.exit_if_all_failed(report.done, report.skipped - before, report.failed + before, "photo")

    try:
        run()
    except typer.Exit:  # interrupted: what was finished is reported too
        said.print_json(reports, as_json)
        raise
    said.print_json(reports, as_json)


def _prune(db: str, folders: list[str | os.PathLike], options) -> set[str]:
    """``index --prune``: the gone photos under ``folders`` removed and said; their paths."""
    from usesearch.indexer.maintenance import prune

    done = prune(db, folders, options, kept_failures=False)  # this run kept them: said, not undone
    opts.console.print(
        f"pruned {counted(done.images_removed, 'image')} whose files are gone "
        f"({counted(done.segments_removed, 'segment')})"
    )
    said.say_held(done, db, options.db_url, folders)
    if done.failing_kept:
        flags = opts.index_flags(db, options.db_url)
        opts.console.print(
            f"{done.failing_kept} photo(s) indexed before fail to read now and keep their segments: "
            f"`usesearch prune {flags}` removes those still failing (with --force, those whose access is refused)"
        )
    said.print_freed(done)
    return set(done.removed) | {path for path, _ in done.moved}


def _refuse_empty_folders(folders: list[str | os.PathLike]) -> None:
    """Folders with nothing in them (a disk not mounted), for a new index: refused as
    the walk refuses them, but before the models' libraries load (5 s and 0.9 GB here)."""
    from usesearch.io.files import holds_anything, photos_under

    if all(holds_anything(folder) is False for folder in folders):  # (unlistable: the walk says what it is)
        photos_under(folders, refuse_none=True)  # (nothing to walk: its one line at once)


@app.command("prune")
@opts.user_errors
def prune_cmd(
    db: opts.DbOpt,
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Only these photos, or the images under these folders (default: all)."),
    ] = None,
    db_url: opts.DbUrlOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Remove them even when every file is gone (an unmounted disk?), and those whose access is refused.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the photos it would remove (or move onto a copy), and why.")
    ] = False,
) -> None:
    """Remove images whose files are gone since indexing (a photo failing since indexed: while it
    still fails to read), with their segments and vectors; a file whose access is refused is kept unless --force;
    then give back the disk their embedding rows (and those of re-indexed photos) took."""
    from usesearch.indexer import IndexOptions
    from usesearch.indexer.maintenance import prune

    folders: list[str | os.PathLike] | None = list(paths) if paths else None
    report = prune(db, folders, IndexOptions(db_url=db_url), force=force, dry_run=dry_run)
    if folders and not report.considered:  # a typo, or a folder never indexed: said, not "0 removed" alone
        missing = [str(f) for f in folders if not os.path.lexists(f)]
        if missing and len(missing) == len(folders):  # (nothing there, nothing indexed there: a typo, an error)
            raise UsesearchError(f"no indexed photo lies under {', '.join(missing)}, and nothing is there: a typo?")
        opts.console.print(f"no indexed photo lies under {', '.join(map(str, folders))}")
    if dry_run:
        for line in [f"would remove {one_line(p)} ({why})" for p, why in report.would_remove] + [
            f"would move {one_line(p)} onto its copy {one_line(copy)}" for p, copy in report.would_move
        ]:
            opts.console.print(line, markup=False, highlight=False)
        said.say_held(report, db, db_url, folders)
        if report.fragment_bytes_freed:
            opts.console.print(
                f"would remove fragments of Ray runs cut short: {report.fragment_bytes_freed / 2**20:.2f} MiB"
            )
        onto = f", {len(report.would_move)} moved onto a copy of theirs" if report.would_move else ""
        opts.console.print(
            f"dry run: {len(report.would_remove)} of {report.considered} images would be removed{onto}; nothing was"
            + (" (every file is gone: is the disk mounted? prune asks for --force)" if report.all_gone else "")
        )
        return
    state = "interrupted; removals so far are kept" if report.interrupted else "finished"
    opts.console.print(
        f"{state}: {counted(report.images_removed, 'image')} removed ({counted(report.segments_removed, 'segment')})"
    )
    if report.annotations_removed:  # (they went unsaid: a labelled photo's annotations are its segments too)
        splits = ", ".join(f"{n} of split {split!r}" for split, n in sorted(report.annotations_removed.items()))
        opts.console.print(
            f"{sum(report.annotations_removed.values())} annotations ({splits}) went with their photos: "
            "`usesearch index PATHS --coco FILE --split SPLIT` embeds them again if the photos come back"
        )
    if report.copies_forgotten:
        n = report.copies_forgotten  # files noted as copies of an indexed photo, not indexed themselves
        opts.console.print(
            f"{counted(n, 'copy', 'copies')} of indexed photos no longer noted: "
            + (
                "its file is gone, or it is indexed under its own name"
                if n == 1
                else "gone, or indexed under their own names"
            )
        )
    said.say_held(report, db, db_url, folders)
    said.print_freed(report)
    if report.interrupted:  # as every command's Ctrl-C: `prune && next-step` must not go on
        raise typer.Exit(130)
