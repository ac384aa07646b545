"""What `index` and `prune` print: their summaries, and the lines under them (moves,
copies, annotations gone with a photo's old content, photos gone from disk)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usesearch.cli import options as opts
from usesearch.cli.photo_limits import say_past_limits
from usesearch.errors import first_few
from usesearch.io.files import one_line
from usesearch.reports import counted

if TYPE_CHECKING:
    from usesearch.indexer.options import IndexReport


def print_json(reports: dict[str, IndexReport], as_json: bool) -> None:
    """``index --json``: the run's reports, on stdout alone (status lines are on stderr)."""
    if as_json and reports:
        print(json.dumps({name: asdict(r) for name, r in reports.items()}, indent=1, default=str))


def say_moved_and_copies(report: IndexReport) -> None:
    opts.say_pairs(report.moved, "photo(s) renamed or moved, their segments kept", sign="->")
    # A folder named through a link to an indexed one: the same files, no copies of them.
    aliases: list[tuple[str, str]] = []
    copies: list[tuple[str, str]] = []
    for a, b in report.copies:
        (aliases if os.path.realpath(a) == os.path.realpath(b) else copies).append((a, b))
    opts.say_pairs(aliases, "skipped: the same files as indexed, reached through a link")
    opts.say_pairs(
        copies,
        (
            "skipped as a copy of a photo indexed under another path",
            "skipped as copies of photos indexed under other paths",
        ),
    )
    # Said: a changed photo's old segments are replaced by its new ones, but a copy's are not.
    replacing = report.copies_replacing
    if replacing:
        opts.console.print(
            f"  {len(replacing)} of those copies ({opts.first_and_more(replacing, one_line(replacing[0][0]))})"
            f" held other content when indexed: the {counted(sum(n for _, n in replacing), 'segment')}"
            " of that content were removed",
            markup=False,
            highlight=False,
        )


def say_annotations_lost(report: IndexReport, this_split: str | None = None) -> None:
    """Annotations that went with a changed photo's old content (their masks were drawn
    on it), by split; ``this_split``'s are embedded again by this very run."""
    lost = {split: n for split, n in sorted(report.annotations_lost.items()) if n and split != this_split}
    if lost:
        splits = ", ".join(f"{n} of split {split!r}" for split, n in lost.items())
        opts.console.print(
            f"  {sum(lost.values())} annotations ({splits}) were on photos whose content changed and went with the "
            "old content: `usesearch index PATHS --coco FILE --split SPLIT` embeds them again on the new"
        )


def say_unread(report: IndexReport, db: str, db_url: str | None) -> None:
    """The photos the run did not read: gone since its walk, or failed before as they are."""
    if report.gone:
        opts.console.print(
            f"  {counted(len(report.gone), 'photo')} ({opts.first_and_more(report.gone, one_line(report.gone[0]))}) "
            "went between the walk and "
            "its read (deleted or moved during the run): not indexed, nothing recorded",
            markup=False,
            highlight=False,
        )
    if report.failed_before:
        opts.console.print(
            f"  {report.failed_before} of the {report.skipped} skipped failed in an earlier run, "
            + ("its content unchanged, and was" if report.failed_before == 1 else "their content unchanged, and were")
            + " not tried again: "
            f"`usesearch failures {opts.index_flags(db, db_url)}` lists them, --retry-failed tries them again"
        )


def past_the_run(say: Callable[..., None]) -> Callable[..., None]:
    """A check a run's summary makes after its work is committed, reading the catalog
    again: a server that does not answer then (restarting) is said in a line, not the
    run's failure (it exited 2 after "finished", its work all committed)."""

    @functools.wraps(say)
    def checked(*args: Any, **kwargs: Any) -> None:
        from sqlalchemy.exc import OperationalError

        from usesearch.errors import CatalogBusyError, CatalogUnavailableError, first_line
        from usesearch.indexer.catalog import failure_kind

        try:
            say(*args, **kwargs)
        except (CatalogUnavailableError, CatalogBusyError, OperationalError) as exc:
            if isinstance(exc, OperationalError) and failure_kind(exc) == "failed":
                raise  # (a damaged SQLite catalog: said as it is; busy or unreachable, as their errors are)
            opts.err_console.print(
                f"  the catalog database did not answer a check after the run ({first_line(exc)}); "
                "the run's work is committed",
                markup=False,
                highlight=False,
            )

    return checked


@past_the_run
def say_no_masks(photos: int, db: str, db_url: str | None) -> None:
    """A run whose photos gave no region, and why where it is known: the index's (the
    run's) preset and masker, also where the run named neither."""
    from usesearch.indexer.folder import open_store

    store = open_store(Path(db), db_url, read_only=True)
    try:
        info = store.info()
    finally:
        store.close()
    random_sam = info is not None and info.preset == "tiny" and info.masker in ("sam", "sam2")
    opts.console.print(
        f"  no masks: the masker found no region in {counted(photos, 'photo')}"
        + (
            f" (the tiny preset's {info.masker} has random weights: this index keeps it; an index made with the "
            "tiny preset's default masker, felzenszwalb, in another --db gets regions)"
            if info is not None and random_sam
            else ""
        )
    )


@past_the_run
def say_gone(db: str, folders: list[str | os.PathLike], db_url: str | None) -> None:
    """The photos indexed under these folders whose files are gone: a line, not a
    silent index that still answers with them (one stat each, the walk just warmed
    them; past ``GONE_CHECKED`` photos, of a sample, and the count said as about)."""
    from usesearch.indexer.folder import open_store
    from usesearch.indexer.leftovers import files_gone

    store = open_store(Path(db), db_url, read_only=True)
    try:
        # Failed: never indexed; failing since indexed: kept by this run, said in its summary.
        count, _, gone, estimated, _ = files_gone(store, folders, indexed_only=True, kept_failures=False)
    finally:
        store.close()
    if gone:
        opts.console.print(
            f"  {'about ' if estimated else ''}{count} indexed photo(s) under these folders are gone "
            f"({one_line(str(gone[0][1]))}: {gone[0][2]}{', ...' if count > 1 else ''}): "
            f"`usesearch prune {opts.index_flags(db, db_url)}` or `index --prune` takes them out"
        )


def print_labelled(report, db: str, db_url: str | None, masker_follows: bool = False) -> None:
    """``masker_follows``: a masker run over the same folders comes next, and makes the
    proposals of photos whose content changed again."""
    state = "interrupted; finished work is kept" if report.interrupted else "finished"
    opts.console.print(
        f"{state}: split {report.split!r}: {counted(report.done, 'photo')} updated "
        f"({counted(report.segments, 'annotation')} indexed, {report.relabelled} relabelled, "
        + (f"{report.redrawn} redrawn, " if report.redrawn else "")
        + f"{report.removed} removed), {report.skipped} with nothing new, "
        f"{report.failed} failed"
        + (f" (with {counted(report.on_failed, 'annotation')} of this file)" if report.on_failed else "")
        + f", {counted(len(report.problems), 'problem')} in {report.seconds:.1f} s"
    )
    for line in report.devices if report.done or report.failed else []:  # (a run that computed nothing loaded none)
        opts.console.print(f"  {line}")
    if report.shared_with:
        opts.console.print(
            f"  split {report.split!r} was also indexed from {', '.join(report.shared_with)}: annotations absent "
            "from this file are kept (--replace-split makes this file its only one)"
        )
        if report.relabelled:  # (two files labelling one id otherwise undid each other's run, unsaid)
            opts.console.print(
                f"  {counted(report.relabelled, 'annotation')} relabelled: where {first_few(report.shared_with)} "
                "gives those ids other labels, the files disagree, and each one's run undoes the other's"
            )
    if report.replaced:
        opts.console.print(
            f"  split {report.split!r} holds this file's annotations alone now: forgot {', '.join(report.replaced)}"
        )
    say_annotations_lost(report, this_split=report.split)
    say_unread(report, db, db_url)
    if report.listed_empty and not report.interrupted:  # (recorded once the pass is whole)
        opts.console.print(
            f"  {counted(report.listed_empty, 'photo')} the file lists with no annotation: `usesearch audit` "
            "searches their proposals for overlooked objects too"
        )
    if report.proposals_lost and not masker_follows:
        lost = report.proposals_lost
        opts.console.print(
            f"  {counted(len(lost), 'photo')} ({opts.first_and_more(lost, one_line(lost[0]))}) changed since a "
            "masker run, and the proposals made of the old content went with it: `usesearch index PATHS` makes "
            "them again",
            markup=False,
            highlight=False,
        )
    say_moved_and_copies(report)
    opts.say_failures(report.failures)
    say_past_limits(report.failures)
    for line in report.problems[:10]:
        opts.console.print(f"  problem: {line}")
    if len(report.problems) + len(report.failures) > 10:
        opts.console.print(f"  (all of them: usesearch failures {opts.index_flags(db, db_url)})")


def print_freed(report) -> None:
    opts.say_pairs(report.moved, "gone photo(s) moved onto a copy of theirs, their segments kept", sign="->")
    if report.embedding_bytes_freed:
        opts.console.print(f"embedding files: {report.embedding_bytes_freed / 2**20:.2f} MiB given back")
    elif report.segments_removed:  # (it said nothing: the disk seemed never given back)
        opts.console.print(
            "embedding files: nothing given back yet (the removed segments' rows lie in a chunk file not yet "
            "closed or not a quarter dead; `usesearch info` counts them as dead bytes)"
        )
    if report.calibrated is not None:  # (shrunk past its last: its searches' defaults changed)
        opts.console.print(f"calibrated: {report.calibrated.describe()}")
    if report.fragment_bytes_freed:
        opts.console.print(f"fragments of Ray runs cut short: {report.fragment_bytes_freed / 2**20:.2f} MiB removed")


def say_held(report, db: str, db_url: str | None, under: list | None) -> None:
    """Photos prune kept because their access is refused (not gone: a chmod or a remount
    gives them back), the first few named, and the prune that removes them: of the same
    photos or folders (a --force of the whole index would lift its unmounted-disk guard)."""
    if not report.held:
        return
    shown = first_few((f"{one_line(path)}: {why}" for path, why in report.held), sep="; ")
    from usesearch.indexer.folder import scope_args

    scope = scope_args(under)
    opts.console.print(
        f"kept {counted(len(report.held), 'photo')} whose file cannot be read now ({shown}): "
        f"give access back, or `usesearch prune{scope} {opts.index_flags(db, db_url)} --force` removes them",
        markup=False,
        highlight=False,
    )


def say_fragments_waiting(db: str, on_ray: bool, interrupted: bool) -> None:
    """Photos a Ray run computed and did not commit (cut short): a run with ``--ray``
    commits them unread; one without computes them again and leaves the files."""
    from usesearch.indexer.fragments import FRAGMENTS, waiting

    count = waiting(db)
    if not count or (on_ray and not interrupted):  # (a whole Ray run's are its photos since deleted or changed)
        return
    where = os.path.join(db, FRAGMENTS)
    opts.console.print(
        f"{counted(count, 'photo')} computed by a Ray run and not committed wait in {where} (a run cut short, "
        "or photos changed since): "
        + ("the next `index --ray` run commits them without computing them again; " if on_ray else "")
        + "`usesearch prune` removes them",
        markup=False,
        highlight=False,
    )
