"""CLI wiring for searching an index: query, similar, serve, and the offline demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from usesearch.cli import options as opts
from usesearch.cli import search_output as out
from usesearch.cli.photo_limits import PhotoLimits, with_photo_limits
from usesearch.errors import UsesearchError
from usesearch.io.atomic import save_picture
from usesearch.reports import counted

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
        out.refuse_overwriting(output, index, {})
        hits = index.query(text, output.k, filters)
        title = f"{text!r}: {out.top_of(len(hits), index, filters)} ({index.info.fingerprint})"
        out.given(hits, output, title, text, index, filters, best=lambda f: index.query(text, 1, f))
        return
    from usesearch.indexer.refine import DEFAULT_TOP, REFINERS, RefineOptions, Refiner

    if refine not in REFINERS:
        raise UsesearchError(f"--refine {refine!r}: choose {', '.join(REFINERS)}")
    index = at.open()
    out.refuse_overwriting(output, index, {})
    options = RefineOptions(top=refine_top or DEFAULT_TOP, device=at.device, disk_bytes=REFINE_DISK_BYTES)
    refiner = Refiner(index, options)
    try:
        hits = refiner.query(text, output.k, filters)
        done = refiner.last
        among = (
            f"{done.refined} of the top {done.photos} photos ({len(done.skipped)} skipped"
            if done.skipped
            else f"the top {done.photos} photos ("
        )
        title = (
            f"{text!r}: {len(hits)} SAM 3 instances in {among}{'; ' if done.skipped else ''}"
            f"{done.image_steps} image steps, {done.cached} cached; {done.ms['total']:.0f} ms)"
        )
        for line in done.skipped:
            typer.echo(f"skipped {line}", err=True)
        # No photo chosen: why, as a search without --refine says it (--min-score's best found
        # without it). Photos chosen and no instance found is SAM 3's answer, said by the title.
        best = (lambda f: index.query(text, 1, f)) if not done.photos else None
        out.given(hits, output, title, text, index, filters, best=best)
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
    if image is not None and sum(given is not None for given in (point, box, mask)) != 1:  # (before the index opens)
        raise UsesearchError("give exactly one of --point X,Y, --box X,Y,W,H or --mask MASK.png")
    index = at.open()
    out.refuse_overwriting(output, index, {"--image": image, "--mask": mask})
    if segment_id is not None:
        hits = index.similar(segment_id, output.k, filters)
        best = lambda f: index.similar(segment_id, 1, f)  # noqa: E731
        out.given(
            hits, output, f"like segment {segment_id}", f"like segment {segment_id}", index, filters, best, kind="image"
        )
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
    typer.echo(f"region: bbox {list(picked.bbox)}, {counted(picked.area, 'pixel')} ({how})", err=True)
    if output.show:
        from usesearch.indexer.export import region_picture

        typer.echo(f"wrote {region_picture(rgb, picked, output.show)}", err=True)
    hits = index.search_region(rgb, picked, output.k, filters)
    best = lambda f: index.search_region(rgb, picked, 1, f)  # noqa: E731
    said = {
        "bbox": list(picked.bbox),
        "area": picked.area,
        "stability_score": picked.stability_score,
        "mask": picked.rle,
    }
    out.given(
        hits,
        output,
        f"like a region of {image.name}",
        f"like a region of {image.name}",
        index,
        filters,
        best,
        said,
        kind="image",
    )


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
    preset: Annotated[
        Optional[str],
        typer.Option(
            help="Model preset: b16, l14-336, or tiny. Default: b16 where its weights are here, else tiny "
            "(a preset named is run or refused).",
            callback=opts.known_preset,
        ),
    ] = None,
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
    named, preset = preset is not None, preset or "b16"
    missing = [s for s in preset_status(get_preset(preset)) if not s.present]
    if missing and named:  # a preset asked for by name is run or refused, as every other command does
        raise UsesearchError(
            f"{preset} weights are not on this machine ({', '.join(s.component for s in missing)}): "
            f"`usesearch models pull {preset}` fetches them; `usesearch demo` without --preset runs the "
            "random-weight 'tiny' preset where b16's are missing"
        )
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
