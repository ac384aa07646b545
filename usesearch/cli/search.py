"""CLI wiring for searching an index: query, similar, serve, and the offline demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from usesearch.cli import options as opts
from usesearch.cli.photo_limits import PhotoLimits, with_photo_limits
from usesearch.errors import UsesearchError, is_disk_full
from usesearch.io.atomic import is_own_stdout, save_picture, write_atomic
from usesearch.io.files import IMAGE_SUFFIXES, one_line

if TYPE_CHECKING:
    from usesearch.indexer import SearchFilters

app = opts.Typer()

# A region of any photo, for ``similar --image``.
RegionPhotoOpt = Annotated[
    Optional[Path], typer.Option(help="Search for a region of this photo (need not be indexed).")
]
PointOpt = Annotated[Optional[str], typer.Option(help="With --image: X,Y in pixels; SAM picks the region there.")]
BoxOpt = Annotated[Optional[str], typer.Option(help="With --image: X,Y,W,H in pixels; SAM picks the region in it.")]
MaskOpt = Annotated[Optional[Path], typer.Option(help="With --image: a PNG whose non-zero pixels are the region.")]
# A second stage for ``query``: SAM 3 segments the phrase in the search's top photos.
RefineOpt = Annotated[
    Optional[str],
    typer.Option(
        "--refine",
        # \[ : typer's help is rich markup, where "[sam3]" would be a style tag, dropped
        help="A second stage: 'sam3' segments the query's phrase in the top photos (pip install -e '.\\[sam3]').",
    ),
]
RefineTopOpt = Annotated[
    Optional[int], typer.Option("--refine-top", min=1, max=200, help="With --refine: photos SAM 3 looks at (20).")
]
REFINE_DISK_BYTES = 4 << 30  # SAM 3's image step on disk in the index folder: 20 photos at float32


def _output(hits, output: opts.SearchOutput, title: str, name: str, index, filters: SearchFilters) -> None:
    """The COCO file and contact sheet asked for (first: a reader of the listing that
    stops early, `| head`, must not cost them), then the hits as JSON with full paths,
    or a table with paths relative to the folder that holds every indexed image
    (absolute paths wrap over several lines at 80 columns)."""
    from usesearch.indexer.export import contact_sheet, hits_to_coco, stale_photos

    if output.export_coco:
        try:
            write_atomic(output.export_coco, json.dumps(hits_to_coco(hits, name)))
        except BrokenPipeError:  # `--export-coco /dev/stdout | head`: ended quietly, as any closed pipe
            raise
        except OSError as exc:
            reason = "disk full" if is_disk_full(exc) else exc.strerror or str(exc)
            raise UsesearchError(f"cannot write {output.export_coco}: {reason}") from None
        typer.echo(f"wrote {output.export_coco}", err=True)
        gone, changed = stale_photos(hits, lambda i: getattr(index.store.image(i), "file_stat", None))
        if gone or changed:  # its masks are as indexed: a training set made of it would not fit these photos
            said = "; ".join(
                f"{what}: {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                for what, names in (("gone", gone), ("changed", changed))
                if names
            )
            typer.echo(
                f"{len(gone) + len(changed)} photo(s) in {output.export_coco} are gone or changed since indexing, "
                f"their masks as indexed ({said}) " + opts.gone_or_changed(index.db_dir, index.store.url),
                err=True,
            )
    if output.show:
        recorded = index.store.image
        sheet, unreadable = contact_sheet(hits, output.show, sha256_of=lambda i: getattr(recorded(i), "sha256", None))
        typer.echo(f"wrote {sheet}", err=True)
        if unreadable:
            names = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
            typer.echo(
                f"{len(unreadable)} photo(s) could not be read or changed, shown grey: {names} "
                + opts.gone_or_changed(index.db_dir, index.store.url),
                err=True,
            )
    folder = index.store.common_folder()
    # `--export-coco /dev/stdout | jq .`: the COCO file alone on stdout, the listing on stderr.
    listing = sys.stderr if output.export_coco and is_own_stdout(output.export_coco) else sys.stdout
    if output.as_json:
        print(json.dumps([h.to_dict() for h in hits], indent=1), file=listing)
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
        (opts.console if listing is sys.stdout else opts.err_console).print(table)
    # Status on stderr: stdout may be carrying --json.
    for line in [] if hits else _why_none(index, filters):
        typer.echo(line, err=True)


def _refuse_overwriting(output: opts.SearchOutput, index, inputs: dict[str, Path | None]) -> None:
    """Before the search: an output that would replace an input, the other output or an
    indexed photo (`--show photos/rocket.png` drew the sheet over the photo)."""
    import os

    from usesearch.indexer.export import region_picture_path
    from usesearch.io.atomic import is_stream

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


def _why_none(index, filters: SearchFilters) -> list[str]:
    """Why a search found nothing, where a filter names what the index does not have."""
    store, why = index.store, []
    if filters.path and not store.image_ids_matching(filters.path):
        folder = store.common_folder()
        why.append(
            f"no indexed photo's path matches --path {filters.path!r}" + (f" (under {folder})" if folder else "")
        )
    for flag, noun, wanted, names in (
        ("--label", "class", filters.label, store.categories),
        ("--split", "split", filters.split, store.splits),
    ):
        if wanted is not None:
            have = names()
            if wanted not in have:
                listed = ", ".join(have[:20]) + (", ..." if len(have) > 20 else "") if have else "none"
                why.append(f"{flag} {wanted!r}: the index has no such {noun} (it has: {listed})")
    if filters.source is not None and not store.has_source(filters.source):
        made_by = (
            "`index IMAGES --coco FILE.json` adds them" if filters.source == "annotation" else "a masker run makes them"
        )
        why.append(f"--source {filters.source}: the index holds no {filters.source} segments ({made_by})")
    return why


@app.command()
@opts.user_errors
@opts.with_index_at
@opts.with_search_filters
@opts.with_search_output
def query(
    text: Annotated[str, typer.Argument(help="What to look for, e.g. 'red apple behind the rabbit'.")],
    refine: RefineOpt = None,
    refine_top: RefineTopOpt = None,
    *,
    at: opts.IndexAt,
    output: opts.SearchOutput,
    filters: SearchFilters,
) -> None:
    """Rank the index's segments against a text (with --refine sam3: SAM 3's instances in the top photos)."""
    if refine is None:
        if refine_top is not None:
            raise UsesearchError("--refine-top goes with --refine sam3")
        index = at.open()
        _refuse_overwriting(output, index, {})
        hits = index.query(text, output.k, filters)
        title = f"{text!r}: top {len(hits)} of {index.index.ntotal} segments ({index.info.fingerprint})"
        _output(hits, output, title, text, index, filters)
        return
    from usesearch.indexer.refine import DEFAULT_TOP, REFINERS, RefineOptions, Refiner

    if refine not in REFINERS:
        raise UsesearchError(f"--refine {refine!r}: choose {', '.join(REFINERS)}")
    index = at.open()
    _refuse_overwriting(output, index, {})
    options = RefineOptions(top=refine_top or DEFAULT_TOP, device=at.device, disk_bytes=REFINE_DISK_BYTES)
    refiner = Refiner(index, options)
    try:
        hits = refiner.query(text, output.k, filters)
        done = refiner.last
        title = (
            f"{text!r}: {len(hits)} SAM 3 instances in the top {done.photos} photos "
            f"({done.image_steps} image steps, {done.cached} cached; {done.ms['total']:.0f} ms)"
        )
        for line in done.skipped:
            typer.echo(f"skipped {line}", err=True)
        _output(hits, output, title, text, index, filters)
    finally:
        refiner.close()  # after the answer: waits for the image steps being written to the cache


@app.command()
@opts.user_errors
@opts.with_index_at
@opts.with_search_filters
@opts.with_search_output
@with_photo_limits
def similar(
    segment_id: Annotated[
        Optional[int], typer.Argument(help="A segment id from a query result (or use --image).")
    ] = None,
    image: RegionPhotoOpt = None,
    point: PointOpt = None,
    box: BoxOpt = None,
    mask: MaskOpt = None,
    *,
    at: opts.IndexAt,
    output: opts.SearchOutput,
    filters: SearchFilters,
    limits: PhotoLimits,
) -> None:
    """Segments most like a given one (query by example), or like a region of any photo."""
    if segment_id is not None and image is not None:
        raise UsesearchError("give a SEGMENT_ID or --image PHOTO, not both")
    if segment_id is None and image is None:
        raise UsesearchError("give a SEGMENT_ID, or --image PHOTO with --point, --box or --mask")
    if image is None and (point or box or mask):
        raise UsesearchError("--point, --box and --mask choose a region of --image PHOTO")
    index = at.open()
    _refuse_overwriting(output, index, {"--image": image, "--mask": mask})
    if segment_id is not None:
        hits = index.similar(segment_id, output.k, filters)
        _output(hits, output, f"like segment {segment_id}", f"like segment {segment_id}", index, filters)
        return
    assert image is not None  # one of the two, checked above

    from usesearch.io.files import read_bytes
    from usesearch.masks import region as region_lib  # (with torch: a segment id's search needs neither)

    rgb = limits.read(image)  # the indexer's safeguards: regular files, size, bombs
    mask_array = None
    if mask is not None:
        mask_array = region_lib.read_mask(read_bytes(str(mask), limits.max_bytes)[0], str(mask), limits.max_pixels)
    picked = index.region(
        rgb,
        point=region_lib.parse_point(point) if point else None,
        box=region_lib.parse_box(box) if box else None,
        mask=mask_array,
    )
    how = "the mask given" if picked.stability_score is None else f"SAM, stability {picked.stability_score:.3f}"
    typer.echo(f"region: bbox {list(picked.bbox)}, {picked.area} pixels ({how})", err=True)
    if output.show:
        from usesearch.indexer.export import region_picture

        typer.echo(f"wrote {region_picture(rgb, picked, output.show)}", err=True)
    hits = index.search_region(rgb, picked, output.k, filters)
    _output(hits, output, f"like a region of {image.name}", f"like a region of {image.name}", index, filters)


@app.command()
@opts.user_errors
@opts.with_index_at
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(
            envvar="USESEARCH_TOKEN",
            show_envvar=True,
            help="Shared secret every request must carry (Bearer header or ?token= once).",
        ),
    ] = None,
    max_per_client: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Connections one address (an IPv6 /64) may hold (default 24); 0: no limit, for a reverse proxy "
            "that limits per client itself.",
        ),
    ] = None,
    *,
    at: opts.IndexAt,
) -> None:
    """Search page and JSON API over an index (its reference at /api); picks up what a running indexer adds."""
    from usesearch.indexer.folder import check_index_at

    check_index_at(at.db, at.db_url)  # a typo said before the web app and its models' libraries load

    from usesearch.indexer.web import serve as run_server

    run_server(
        at.db,
        host=host,
        port=port,
        token=token,
        db_url=at.db_url,
        device=at.device,
        faiss_device=at.faiss_device,
        per_client=max_per_client,
    )


@app.command()
@opts.user_errors
def demo(
    ctx: typer.Context,
    query_text: Annotated[
        str,
        typer.Argument(help="Text to search for."),
        opts.Formerly("--query", note="`demo --query TEXT` is now `demo TEXT`"),
    ] = "a cat's face",
    preset: opts.PresetOpt = None,
    demo_dir: Annotated[
        Path,
        typer.Option(
            "--demo-dir", help="Folder for the sample photos and the index.", callback=opts.folder_for("the demo")
        ),
        opts.Formerly("--out"),
    ] = Path("usesearch-demo"),
) -> None:
    """Offline demo: index scikit-image's bundled photos and run a query (tiny preset where weights are missing)."""
    from usesearch.models.presets import get_preset
    from usesearch.models.weights import preset_status

    if not query_text.strip():  # as `query` refuses it, before the photos are written and indexed
        raise UsesearchError("the query text is empty")
    preset = preset or "b16"
    missing = [s for s in preset_status(get_preset(preset)) if not s.present]
    if missing:
        opts.console.print(
            f"{preset} weights are not on this machine ({', '.join(s.component for s in missing)}; "
            f"`usesearch models pull {preset}` fetches them): running with the random-weight 'tiny' preset, "
            "so the ranking below shows the pipeline working, not real matches.",
            style="yellow",
        )
        preset = "tiny"
    db = str(demo_dir / opts.DEMO_INDEX.format(preset=preset))
    # First: it marks the folder as the demo's, kept by a kill in the next step.
    Path(db).mkdir(parents=True, exist_ok=True)
    photos = _write_sample_photos(demo_dir / "photos")
    # The two commands by name, as a user would run them (no command module imports another).
    commands = ctx.find_root().command.commands  # type: ignore[attr-defined]  # the root is a group
    for args in (
        ["index", str(photos), "--db", db, "--preset", preset],
        ["query", query_text, "--db", db, "-k", "5", "--per-image"],
    ):
        with commands[args[0]].make_context(args[0], args[1:], parent=ctx) as run:
            commands[args[0]].invoke(run)
    opts.console.print(f"Browse these segments: usesearch serve --db {db}  (then open http://127.0.0.1:8000)")


def _write_sample_photos(folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in opts.DEMO_SAMPLES:
        target = folder / f"{name}.jpg"
        if not target.exists():
            photo = Image.fromarray(getattr(data, name)()).convert("RGB")
            photo.thumbnail((640, 640))
            save_picture(photo, target, mark=False, quality=92)  # a kill mid-save leaves no broken photo kept
    return folder
