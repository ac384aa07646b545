"""CLI wiring for ``audit --db DIR``: a labelled dataset in an index, audited from what
the index stores, its five lists written as JSON, CSV and contact sheets.

For one release ``audit --coco FILE --images DIR`` (no ``--db``) still means ``eval
audit``, with a deprecation line: ``AuditCommand`` hands such a command line to the
old command that ``app.py`` gives it (command modules do not import each other)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Optional

import typer
from typer.core import TyperCommand

from usesearch.cli import options as opts
from usesearch.errors import UsesearchError

app = opts.Typer()
OLD_FLAGS = ("--coco", "--images")


class AuditCommand(TyperCommand):
    """``audit``: the index's audit, or, given ``--coco``/``--images`` and no ``--db``,
    the old spelling of ``eval audit`` (``old``: its callback, set by ``app.py``)."""

    old: ClassVar[tuple[Callable[..., Any], ...]] = ()  # a tuple: a function here would bind as a method

    def for_args(self, args) -> Any:
        """The command ``args`` run: this one, or the old spelling's."""
        flags = {a.split("=", 1)[0] for a in args}
        if self.old and "--db" not in flags and flags & set(OLD_FLAGS):
            legacy = opts.Typer()
            legacy.command("audit", hidden=True)(self.old[0])
            return typer.main.get_command(legacy)
        return self

    def make_context(self, info_name, args, parent=None, **extra):
        mixed = sorted({a.split("=", 1)[0] for a in args} & set(OLD_FLAGS))
        if "--db" in {a.split("=", 1)[0] for a in args} and mixed:  # (click said only "No such option: --coco")
            typer.echo(
                f"error: {'/'.join(mixed)}: audit --db DIR reads what the index holds (add a file to it with "
                "`usesearch index IMAGES --coco FILE --db DIR`); the audit of a COCO file itself is "
                "`usesearch eval audit --coco FILE --images DIR`",
                err=True,
            )
            raise typer.Exit(2)
        command = self.for_args(args)
        if command is not self:
            return command.make_context(info_name, list(args), parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@app.command("audit", cls=AuditCommand)
@opts.user_errors
def audit(
    db: opts.DbOpt,
    db_url: opts.DbUrlOpt = None,
    report_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--report-dir",
            help="Folder for each list's JSON, CSV and contact sheet (default: DIR/audit/report).",
            callback=opts.folder_for("an audit report"),
        ),
    ] = None,
    k: opts.KOpt = 50,
    split: Annotated[
        Optional[str],
        typer.Option(
            "--split",
            help="Report only this split's items (an annotation's split; a proposal's or leak's photo's), from "
            "each list's 1,000 best over the whole dataset.",
        ),
    ] = None,
    include_reviewed: Annotated[
        bool, typer.Option("--include-reviewed", help="Show items already marked ok or wrong, with their verdict.")
    ] = False,
    sheets: Annotated[bool, typer.Option("--sheets/--no-sheets", help="Draw a contact sheet per list.")] = True,
    verdict_files: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--verdicts",
            exists=True,
            dir_okay=False,
            help="A list's CSV (as the last audit wrote it) with its verdict column filled in: ok or wrong, none "
            "takes one back, empty leaves the item as it is. Kept in the index before the audit runs; repeatable.",
        ),
    ] = None,
    batch: Annotated[
        int, typer.Option("--batch", min=1, hidden=True, help="Annotations (or photos' segments) per checkpoint.")
    ] = 20_000,
    device: opts.DeviceOpt = None,
    as_json: opts.JsonOpt = False,
) -> None:
    """Audit a labelled dataset indexed with `index IMAGES --coco FILE.json`: swapped labels, overlooked
    objects, badly located masks, leaks between splits, outliers. Resumes after a kill."""
    from usesearch.indexer.folder import check_index_at, open_store
    from usesearch.io.files import one_line

    check_index_at(db, db_url)  # a typo said before the models' libraries load
    if split is not None:  # (a typo said before the audit's minutes)
        check_split(db, db_url, split)
    if verdict_files:  # kept before the audit runs: its lists then leave the reviewed items out
        from usesearch.indexer.audit.verdict_files import keep_verdicts

        for said in keep_verdicts(db, list(verdict_files), db_url):
            opts.console.print(said.summary())
    from usesearch.indexer.audit import AuditConfig, audit_index, report, reviews

    out = Path(report_dir) if report_dir is not None else Path(db) / "audit" / "report"
    opts.refuse_report_in_an_index(out, audited=db)
    # Each list holds at least -k unreviewed items (a larger -k than the last run's ranks the photos again).
    config = AuditConfig(batch=batch, keep=max(AuditConfig.keep, k))
    try:
        result = audit_index(db, db_url, config, device=device, say=opts.console.print)
    except KeyboardInterrupt:  # ("interrupted" alone: its checkpoint's batches are kept)
        from usesearch.indexer.audit.lists_file import CHECKPOINT, FOLDER

        if (Path(db) / FOLDER / CHECKPOINT).is_file():
            flags = opts.index_flags(db, db_url)
            print(
                f"interrupted; the audit's finished batches are kept: `usesearch audit {flags}` goes on",
                file=sys.stderr,
            )
            raise typer.Exit(130) from None
        raise
    if split is not None:
        from usesearch.indexer.audit.items import of_split

        result = {**result, "lists": of_split(result["lists"], split)}
    store = open_store(Path(db), db_url, read_only=True)
    try:
        verdicts = reviews.verdicts(store.engine, lists=result["lists"])  # (on items as they are now)
        written, drawn, unreadable = report.write_lists(
            result["lists"], store, out, k, verdicts, include_reviewed, sheets
        )
    finally:
        store.close()
    # Verdicts on items the lists still hold (one on a photo pruned since counted as reviewed).
    reviewed_in = lambda kind: sum(1 for i in result["lists"][kind] if (kind, i["item"]) in verdicts)  # noqa: E731
    # (lists of an older audit: those it kept; a split's: its among the kept best, the
    # whole dataset's count saying nothing of it)
    found = result.get("found", {}) if split is None else {}
    found = {kind: found.get(kind, len(result["lists"][kind])) for kind in written}
    for kind, items in written.items():
        reviewed = reviewed_in(kind)
        first = items[0] if items else None
        line = f"{kind:>14}: {found[kind]} found, {reviewed} reviewed"
        if first is not None:
            where = first.get("image") or " and ".join(first.get("paths", []))  # a leak: its photos
            where = one_line(where)  # a name holding a newline: one line still, as query prints it
            line += f"; first: {first['item']} (score {first['score']:.3f}, {where})"
        opts.console.print(line)
    opts.console.print(
        f"wrote {out}/{{{','.join(written)}}}.json, .csv"
        + (f"; contact sheets {', '.join(drawn)}.png" if drawn else "")
    )
    if as_json:  # per list: how many found and reviewed, its files, and the top k items as its JSON has them
        lists = {
            kind: {
                "found": found[kind],
                "reviewed": reviewed_in(kind),
                "files": [str(out / f"{kind}.{ext}") for ext in ("json", "csv")]
                + ([str(out / f"{kind}.png")] if kind in drawn else []),
                "top": items,
            }
            for kind, items in written.items()
        }
        print(
            json.dumps({"report_dir": str(out), "lists": lists, "unreadable": list(unreadable)}, indent=1, default=str)
        )
    if split is not None:
        opts.console.print(
            f"--split {split}: the items of {split} among each list's {config.keep:,} best over the whole dataset"
        )
    if unreadable:
        opts.console.print(opts.drawn_grey(unreadable, "drawn", db, db_url))


def check_split(db: str | Path, db_url: str | None, split: str) -> None:
    """``--split``: one of the dataset's splits, else a one-line refusal naming them."""
    from usesearch.indexer.filters import did_you_mean
    from usesearch.indexer.folder import open_store

    store = open_store(Path(db), db_url, read_only=True)
    try:
        splits = [name for name in store.splits() if name]
    finally:
        store.close()
    if split not in splits:
        named = ", ".join(map(repr, splits)) if splits else "none (no labelled dataset is indexed)"
        raise UsesearchError(f"--split {split!r}: the dataset's splits are {named}{did_you_mean(split, splits)}")
