"""What a search gives: the COCO file and contact sheet asked for, the hits as a
table or JSON, and the notes beside them on stderr (photos gone since indexing, why
nothing was found); and, before the search, the outputs checked against what they
would replace."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from usesearch.cli import options as opts
from usesearch.errors import UsesearchError, first_few, is_disk_full
from usesearch.io.atomic import is_own_stdout, write_atomic
from usesearch.io.files import IMAGE_SUFFIXES, one_line

if TYPE_CHECKING:
    from usesearch.indexer import SearchFilters

# What a listing spends telling the hits' photos gone: a stat each is ~5 us on a local
# disk (50 ms for -k 10000) and can be ~1 ms on network storage (10 s): past this, the rest
# are not checked and the note says how many were.
LISTING_CHECK_S = 1.0


def given(
    hits,
    output: opts.SearchOutput,
    title: str,
    name: str,
    index,
    filters: SearchFilters,
    best=None,
    region=None,
    kind: str = "text",
) -> None:
    """The COCO file and contact sheet asked for (first: a reader of the listing that
    stops early, `| head`, must not cost them), then the hits as JSON with full paths,
    or a table with paths relative to the folder that holds every indexed image
    (absolute paths wrap over several lines at 80 columns); piped, a row a hit, unwrapped."""
    from usesearch.indexer.export import contact_sheet, hits_to_coco

    if output.export_coco:
        try:
            write_atomic(output.export_coco, json.dumps(hits_to_coco(hits, name)))
        except BrokenPipeError:  # `--export-coco /dev/stdout | head`: ended quietly, as any closed pipe
            raise
        except OSError as exc:
            reason = "disk full" if is_disk_full(exc) else exc.strerror or str(exc)
            raise UsesearchError(f"cannot write {output.export_coco}: {reason}") from None
        typer.echo(f"wrote {output.export_coco}", err=True)
        # Its masks are as indexed: a training set made of it would not fit these photos.
        _say_stale(hits, index, f"in {output.export_coco}", ", their masks as indexed", by_stat=True)
    if output.show and not hits:  # (a blank white sheet was written, saying nothing)
        typer.echo(f"no hits: {output.show} not written", err=True)
    elif output.show:
        recorded = index.store.image
        sheet, unreadable = contact_sheet(hits, output.show, sha256_of=lambda i: getattr(recorded(i), "sha256", None))
        typer.echo(f"wrote {sheet}", err=True)
        if unreadable:
            typer.echo(opts.drawn_grey(unreadable, "shown", index.db_dir, index.store.url), err=True)
    folder = index.store.common_folder()
    # `--export-coco /dev/stdout | jq .`: the COCO file alone on stdout, the listing on stderr.
    listing = sys.stderr if output.export_coco and is_own_stdout(output.export_coco) else sys.stdout
    if output.as_json:  # (a region searched: ``{"region", "hits"}``, as the web API's region search)
        listed = [h.to_dict() for h in hits]
        print(json.dumps(listed if region is None else {"region": region, "hits": listed}, indent=1), file=listing)
    else:
        table = Table(title=title, caption=f"paths under {folder}" if folder else None)
        labelled = any(h.source == "annotation" for h in hits)  # a labelled dataset's: its class and split too
        for column in ("rank", "score", "segment", "image", "bbox (x, y, w, h)", "area") + ("label",) * labelled:
            table.add_column(column, overflow="fold")
        for h in hits:
            image = h.image[len(folder) :] if folder and h.image.startswith(folder) else h.image
            label = (f"{h.category} [{h.split}]" if h.source == "annotation" else h.source,) * labelled
            row = (str(h.rank), f"{h.score:.3f}", str(h.segment_id), one_line(image), str(h.bbox), str(h.area))
            table.add_row(*row, *label)  # a newline in a file name spelt out: one row a hit
        target = opts.console if listing is sys.stdout else opts.err_console
        if not target.is_terminal:  # piped: a row a hit, paths whole (at 80 columns they broke mid-name for grep)
            target = Console(markup=False, emoji=False, stderr=listing is sys.stderr, width=100_000)
        # No hit: the title alone ("top 0 of ..."), no empty table under it; the notes below say why.
        target.print(table if hits else Text(title))
    # Status on stderr: stdout may be carrying --json.
    if not (output.export_coco or output.show):  # (those said it of their own photos)
        _say_stale(hits, index, "among the hits", "", by_stat=False)
    from usesearch.indexer.leftovers import lost_among

    # Hits from an index whose embedding files are damaged: said (FAISS's answers stand).
    notes = [lost_among(index.store, [h.segment_id for h in hits])] if hits else _why_none(index, filters, best)
    from usesearch.indexer.filters import effort_notes

    flags = opts.index_flags(index.db_dir, index.store.url)
    for line in [n for n in notes if n] + effort_notes(
        index, filters, _flag, f"`usesearch info {flags}` says why; ", kind
    ):
        typer.echo(line, err=True)


def refuse_overwriting(output: opts.SearchOutput, index, inputs: dict[str, Path | None]) -> None:
    """Before the search: an output that would replace an input, the other output or an
    indexed photo (`--show photos/rocket.png` drew the sheet over the photo)."""
    import os

    from usesearch.indexer.export import check_sheet, region_picture_path
    from usesearch.io.atomic import is_stream

    if output.show and not is_stream(output.show):  # (as many as -k where the index holds as many: before it runs)
        check_sheet(output.show, min(output.k, index.index.ntotal), asked=True)
    outputs = {"--show": output.show, "--export-coco": output.export_coco}
    if output.show and inputs.get("--image"):
        region = outputs["--show's region picture"] = region_picture_path(output.show)
        opts.refuse_replacing_a_photo(region, "--show's region picture")
    opts.refuse_overwriting(outputs, inputs)
    for flag, path in outputs.items():
        if path is None or is_stream(path):
            continue
        for spelled in {os.path.abspath(path), os.path.realpath(path)}:  # as the indexer keys it, or its target
            if index.store.image_by_path(os.fsencode(spelled)) is not None:
                raise UsesearchError(f"{flag} {path} is an indexed photo: it would be overwritten; write elsewhere")
        real = Path(os.path.realpath(path))
        # The index's own files (`--export-coco DIR/segments.sqlite` replaced the catalog): refused
        # as the option is read (`paths.refuse_into_own_folder`) where the folder shows its
        # marks; here too for one that does not (a catalog on PostgreSQL from before ids);
        # a picture in its folder is left out of every walk, and may go there.
        in_index_folder = Path(os.path.realpath(index.db_dir)) in real.parents
        if in_index_folder and real.suffix.lower() not in IMAGE_SUFFIXES:
            raise UsesearchError(f"{flag} {path} lies in the index's folder, among its own files: write elsewhere")
        folders = {real.parent, Path(os.path.abspath(path)).parent}  # as the indexer keys photos, or the target's
        if real.suffix.lower() in IMAGE_SUFFIXES and not in_index_folder:
            walked = _indexed_folder_holding(index, path)
            if walked or any(_beside_indexed_photos(index, f) for f in folders):
                raise UsesearchError(
                    f"{flag} {path} lies among indexed photos{f' (under {walked})' if walked else ''}: the next "
                    "`usesearch index` of that folder would index it as a photo; write elsewhere"
                )


def _indexed_folder_holding(index, path: Path) -> str | None:
    """The folder an ``index`` run walked that holds ``path``, None when none does: by
    real paths (the walk follows a link to a folder only where its target lies in the
    walked folder)."""
    import os

    real = os.path.realpath(path)
    for folder in map(os.fsdecode, index.store.indexed_folders()):
        if real.startswith(folder.rstrip(os.sep) + os.sep):
            return folder
    return None


def _beside_indexed_photos(index, folder: Path, most: int = 200) -> bool:
    """True when one of the first ``most`` pictures in ``folder`` is an indexed photo."""
    import os

    try:
        with os.scandir(folder) as listing:
            names = [e.name for e in listing if Path(e.name).suffix.lower() in IMAGE_SUFFIXES][:most]
    except OSError:
        return False
    return any(index.store.image_by_path(os.fsencode(str(folder / name))) is not None for name in names)


def _say_stale(hits, index, where: str, masks: str, by_stat: bool) -> None:
    """The hits' photos not on disk (a file gone, unlike a deleted record, is in the index
    until `prune`; a disk not mounted here looks the same), and with ``by_stat`` those
    changed (a catalog read a photo: for an export's thousand hits, not a listing's), in
    one line on stderr, with what to do about each kind found. A listing checks the photos
    it can in ``LISTING_CHECK_S`` (an export, whose masks must fit, checks every one)."""
    import functools
    import time

    from usesearch.indexer.export import stale_photos

    recorded = functools.cache(index.store.image)
    gone, changed, checked = stale_photos(
        hits,
        lambda i: getattr(recorded(i), "file_stat", None) if by_stat else None,
        lambda i: getattr(recorded(i), "sha256", None),
        until=None if by_stat else time.monotonic() + LISTING_CHECK_S,
    )
    photos = len({hit.image_id for hit in hits})
    if checked < photos:
        where += f" (of the first {checked:,} of {photos:,} photos, checked in {LISTING_CHECK_S:g} s)"
    if not (gone or changed):
        if checked < photos:  # (the rest unchecked: said, not taken as there)
            typer.echo(f"the hits' photos on disk: the first {checked:,} of {photos:,} checked, the rest not", err=True)
        return
    said = "; ".join(
        f"{what}: {first_few(one_line(n) for n in names)}"
        for what, names in (("not on disk", gone), ("changed", changed))
        if names
    )
    flags = opts.index_flags(index.db_dir, index.store.url)
    todo = [f"`usesearch prune {flags}` removes photos gone for good"] * bool(gone)
    todo += [f"`usesearch index PATHS {flags}` again embeds the changed"] * bool(changed)
    kinds = " or ".join(["not on disk here"] * bool(gone) + ["changed since indexing"] * bool(changed))
    typer.echo(f"{len(gone) + len(changed)} photo(s) {where} are {kinds}{masks} ({said}; {'; '.join(todo)})", err=True)


def _why_none(index, filters: SearchFilters, best=None) -> list[str]:
    from usesearch.indexer.filters import why_none

    return why_none(index.store, filters, best, _flag)


def top_of(found: int, index, filters: SearchFilters) -> str:
    """A table's title: how many hits, of how many segments ("top 2 of 581 segments"),
    saying where filters kept some out (the 581 were not all searched)."""
    from usesearch.indexer.filters import narrowed_by

    narrowed = narrowed_by(filters, _flag)
    total = f"{index.index.ntotal:,} segments"
    # What shapes the hits without keeping segments out: said after, as flags.
    kept = "".join(f", {_flag(name)}" for name in ("per_image", "distinct") if getattr(filters, name))
    return (
        f"top {found} of the segments where {narrowed} ({total} in the index{kept})"
        if narrowed
        else f"top {found} of {total}" + (f" ({kept[2:]})" if kept else "")
    )


def _flag(name: str) -> str:
    """A filter's field as the CLI spells it: its flag."""
    return f"--{name.replace('_', '-')}"
