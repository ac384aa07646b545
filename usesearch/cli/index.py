"""CLI wiring for the index and serving stages: index, query, similar, info, failures, reindex, serve, demo.

The only core module that imports ``indexer``: the CLI joins the stages.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from usesearch.cli.options import DeviceOpt, FaissDeviceOpt, HeadOpt, PresetOpt, console, shared_options, user_errors
from usesearch.errors import UsesearchError, is_disk_full

app = typer.Typer()

# A string, not a Path: Path("") would silently turn an empty --db into the current folder.
DbOpt = Annotated[str, typer.Option("--db", help="Index folder (SQLite metadata, FAISS vectors, lock).")]
DbUrlOpt = Annotated[
    Optional[str], typer.Option("--db-url", help="SQLAlchemy URL for the metadata instead of SQLite in --db.")
]
KOpt = Annotated[int, typer.Option("-k", min=1, max=1000, help="Number of hits.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PerImageOpt = Annotated[bool, typer.Option("--per-image", help="Keep only the best segment of each image.")]
PathOpt = Annotated[Optional[str], typer.Option("--path", help="Only images whose path matches this glob.")]
MinAreaOpt = Annotated[int, typer.Option("--min-area", min=0, help="Only segments of at least this many pixels.")]
NprobeOpt = Annotated[
    Optional[int],
    typer.Option("--nprobe", min=1, help="Compressed index: clusters visited per query (more: slower, higher recall)."),
]
RerankOpt = Annotated[
    Optional[int],
    typer.Option(
        "--rerank", min=1, help="Compressed index: candidates re-scored exactly per query (default max(1000, 100 k))."
    ),
]
MinScoreOpt = Annotated[
    Optional[float],
    typer.Option("--min-score", help="Only hits scoring at least this (cosine); k may then return fewer."),
]
DistinctOpt = Annotated[
    bool,
    typer.Option(
        "--distinct", help="Drop a hit that mostly lies inside (or mostly contains) a better hit of the same photo."
    ),
]
ShardSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--shard-size",
        min=0,
        help="Segments per FAISS shard (0: one shard); shards share one trained quantizer, so they answer as one index and a write rewrites only the shards that changed.",
    ),
]
ShowOpt = Annotated[Optional[Path], typer.Option("--show", help="Write a contact sheet PNG of the hits.")]
ExportOpt = Annotated[
    Optional[Path], typer.Option("--export-coco", help="Write the hits as a COCO annotations/results JSON.")
]


def _outputs(hits, name: str, show: Optional[Path], export: Optional[Path]) -> None:
    from usesearch.indexer.export import contact_sheet, hits_to_coco

    # Status on stderr: stdout may be carrying --json.
    if show:
        typer.echo(f"wrote {contact_sheet(hits, show)}", err=True)
    if export:
        try:
            export.write_text(json.dumps(hits_to_coco(hits, name)))
        except OSError as exc:
            reason = "disk full" if is_disk_full(exc) else exc.strerror or str(exc)
            raise UsesearchError(f"cannot write {export}: {reason}") from None
        typer.echo(f"wrote {export}", err=True)


@app.command()
@user_errors
def index(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively).")],
    db: DbOpt,
    preset: PresetOpt = None,
    embedder: Annotated[Optional[str], typer.Option(help="use | crop (default: use where a head exists)")] = None,
    head: HeadOpt = None,
    masker: Annotated[
        Optional[str], typer.Option(help="sam | sam2 | felzenszwalb | coco (default: sam; felzenszwalb for tiny)")
    ] = None,
    coco: Annotated[
        Optional[Path], typer.Option("--coco", help="COCO JSON of your own masks, for --masker coco.")
    ] = None,
    points_per_side: Annotated[
        Optional[int], typer.Option(min=1, help="SAM: grid prompts per side (default 32).")
    ] = None,
    points_per_batch: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="SAM: prompts per decoder batch (default 64 on a CPU; on a GPU as many as its free memory holds).",
        ),
    ] = None,
    pred_iou_thresh: Annotated[
        Optional[float], typer.Option(help="SAM: keep masks whose predicted IoU exceeds this (default 0.88).")
    ] = None,
    stability_thresh: Annotated[
        Optional[float], typer.Option(help="SAM: keep masks at least this stable (default 0.95).")
    ] = None,
    box_nms_thresh: Annotated[
        Optional[float], typer.Option(help="SAM: box IoU above which duplicates go (default 0.7).")
    ] = None,
    crop_layers: Annotated[
        Optional[int], typer.Option(min=0, help="SAM: layers of image crops prompted again (default 0).")
    ] = None,
    min_region_area: Annotated[
        Optional[int], typer.Option(min=0, help="SAM: remove holes and islands smaller than this (default 0).")
    ] = None,
    encoder_batch: Annotated[
        Optional[int], typer.Option(min=1, help="SAM: photos per image-encoder call (default 4 on a GPU, 1 on a CPU).")
    ] = None,
    factory: Annotated[
        Optional[str],
        typer.Option(help="FAISS index_factory string for a new index (default: chosen by size, again as it grows)."),
    ] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try failed images again.")] = False,
    device: DeviceOpt = None,
    faiss_device: FaissDeviceOpt = None,
    db_url: DbUrlOpt = None,
    shard_size: ShardSizeOpt = None,
    prune_gone: Annotated[
        bool,
        typer.Option("--prune", help="Also remove images under PATHS whose files are gone since they were indexed."),
    ] = False,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray", help="Run on Ray: a bare --ray starts Ray on this machine; --ray ADDRESS joins that cluster."
        ),
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(min=1, help="With --ray: model actors (default: one per GPU, else one per 2 CPUs).")
    ] = None,
    compile_models: Annotated[
        bool,
        typer.Option(
            "--compile", help="torch.compile SAM and the backbones: minutes of compiling first, for long GPU runs."
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Check every embedding row's checksum; photos with damaged rows are embedded again."
        ),
    ] = False,
) -> None:
    """Segment and embed every image under PATHS into the index at --db (incremental, resumable)."""
    from tqdm import tqdm

    from usesearch.indexer import IndexOptions, index_paths

    sam_settings = dict(
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_thresh,
        box_nms_thresh=box_nms_thresh,
        crop_n_layers=crop_layers,
        min_mask_region_area=min_region_area,
        encoder_batch=encoder_batch,
    )
    masker_options = {k: v for k, v in sam_settings.items() if v is not None}
    if coco is not None:
        masker_options["masks_json"] = str(coco)
    options = IndexOptions(
        preset=preset,
        embedder=embedder,
        head=str(head) if head else None,
        masker=masker,
        masker_options=masker_options,
        device=device,
        faiss_device=faiss_device,
        factory=factory,
        compile=compile_models,
        repair=repair,
        retry_failed=retry_failed,
        db_url=db_url,
        shard_size=shard_size,
    )
    bar = tqdm(unit="img", dynamic_ncols=True, disable=None)
    start = time.perf_counter()

    def progress(report, path, total):
        bar.total = total
        bar.update(report.done + report.skipped + report.failed - bar.n)
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(seg_s=f"{report.segments / elapsed:.1f}", failed=report.failed)

    if workers is not None and ray is None:
        raise UsesearchError("--workers applies to --ray runs only")
    if ray is not None:
        from usesearch.indexer.distributed import index_paths_ray

        report = index_paths_ray(paths, db, options, progress, address=ray, workers=workers)
    else:
        report = index_paths(paths, db, options, progress)
    bar.close()
    if prune_gone and not report.interrupted:
        from usesearch.indexer.prune import prune

        pruned = prune(db, paths, options)
        console.print(
            f"pruned {pruned.images_removed} images whose files are gone ({pruned.segments_removed} segments)"
        )
        _print_freed(pruned)
    state = "interrupted; finished work is kept" if report.interrupted else "finished"
    console.print(
        f"{state}: {report.done} images indexed, {report.skipped} skipped, {report.failed} failed, "
        f"{report.segments} segments in {report.seconds:.1f} s"
    )
    if repair:
        console.print(f"  repair: {len(report.repaired)} photos had damaged embedding rows and were embedded again")
        for path in report.unrepaired[:10]:
            console.print(f"  damaged but not under the folders given, so left as it is: {path}")
    for line in report.devices:
        console.print(f"  {line}", markup=False)
    for path, reason in report.failures[:10]:
        console.print(f"  failed: {path}: {reason}", markup=False)
    if report.interrupted:
        raise typer.Exit(130)


def _print_hits(hits, as_json: bool, title: str, folder: str | None = None) -> None:
    """JSON with full paths, or a table with paths relative to the indexed ``folder``
    (absolute paths wrap over several lines at 80 columns)."""
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], indent=1))
        return
    table = Table(title=title, caption=f"paths under {folder}" if folder else None)
    for column in ("rank", "score", "segment", "image", "bbox (x, y, w, h)", "area"):
        table.add_column(column, overflow="fold")
    for h in hits:
        image = h.image[len(folder) :] if folder and h.image.startswith(folder) else h.image
        table.add_row(str(h.rank), f"{h.score:.3f}", str(h.segment_id), image, str(h.bbox), str(h.area))
    console.print(table)


@dataclass
class SearchOptions:
    """What query and similar share: how many hits, which, and where they go."""

    k: int = 10
    as_json: bool = False
    per_image: bool = False
    path: Optional[str] = None
    min_area: int = 0
    show: Optional[Path] = None
    export_coco: Optional[Path] = None
    db_url: Optional[str] = None
    nprobe: Optional[int] = None
    rerank: Optional[int] = None
    min_score: Optional[float] = None
    distinct: bool = False

    def filters(self) -> dict:
        return {
            "k": self.k,
            "per_image": self.per_image,
            "path": self.path,
            "min_area": self.min_area,
            "nprobe": self.nprobe,
            "rerank": self.rerank,
            "min_score": self.min_score,
            "distinct": self.distinct,
        }

    def output(self, hits, title: str, name: str, index) -> None:
        _print_hits(hits, self.as_json, title, index.store.common_folder())
        _outputs(hits, name, self.show, self.export_coco)


with_search_options = shared_options(
    "search",
    SearchOptions,
    {
        "k": (KOpt, 10),
        "as_json": (JsonOpt, False),
        "per_image": (PerImageOpt, False),
        "path": (PathOpt, None),
        "min_area": (MinAreaOpt, 0),
        "show": (ShowOpt, None),
        "export_coco": (ExportOpt, None),
        "db_url": (DbUrlOpt, None),
        "nprobe": (NprobeOpt, None),
        "rerank": (RerankOpt, None),
        "min_score": (MinScoreOpt, None),
        "distinct": (DistinctOpt, False),
    },
)


@app.command()
@user_errors
@with_search_options
def query(
    text: Annotated[str, typer.Argument(help="What to look for, e.g. 'red apple behind the rabbit'.")],
    db: DbOpt,
    device: DeviceOpt = None,
    faiss_device: FaissDeviceOpt = None,
    *,
    search: SearchOptions,
) -> None:
    """Rank the index's segments against a text."""
    from usesearch.indexer import SegmentIndex

    index = SegmentIndex.open(db, db_url=search.db_url, device=device, faiss_device=faiss_device)
    hits = index.query(text, **search.filters())
    search.output(
        hits, f"{text!r}: top {len(hits)} of {index.index.ntotal} segments ({index.info.fingerprint})", text, index
    )


@app.command()
@user_errors
@with_search_options
def similar(
    db: DbOpt,
    segment_id: Annotated[
        Optional[int], typer.Argument(help="A segment id from a query result (or use --image).")
    ] = None,
    image: Annotated[
        Optional[Path], typer.Option("--image", help="Search for a region of this photo (need not be indexed).")
    ] = None,
    point: Annotated[
        Optional[str], typer.Option("--point", help="With --image: X,Y in pixels; SAM picks the region there.")
    ] = None,
    box: Annotated[
        Optional[str], typer.Option("--box", help="With --image: X,Y,W,H in pixels; SAM picks the region in it.")
    ] = None,
    mask: Annotated[
        Optional[Path], typer.Option("--mask", help="With --image: a PNG whose non-zero pixels are the region.")
    ] = None,
    device: DeviceOpt = None,
    faiss_device: FaissDeviceOpt = None,
    *,
    search: SearchOptions,
) -> None:
    """Segments most like a given one (query by example), or like a region of any photo."""
    from usesearch.indexer import SegmentIndex
    from usesearch.masks import region as region_lib

    if (segment_id is None) == (image is None):
        raise UsesearchError("give a SEGMENT_ID, or --image PHOTO with --point, --box or --mask")
    if image is None and (point or box or mask):
        raise UsesearchError("--point, --box and --mask choose a region of --image PHOTO")
    index = SegmentIndex.open(db, db_url=search.db_url, device=device, faiss_device=faiss_device)
    if segment_id is not None:
        hits = index.similar(segment_id, **search.filters())
        search.output(hits, f"like segment {segment_id}", f"like segment {segment_id}", index)
        return
    from usesearch.io.files import decode, read_bytes

    rgb = decode(read_bytes(str(image))[0], str(image))  # the indexer's safeguards: regular files, size, bombs
    mask_array = None
    if mask is not None:
        mask_array = decode(read_bytes(str(mask))[0], str(mask)).any(axis=2)
    picked = index.region(
        rgb,
        point=region_lib.parse_point(point) if point else None,
        box=region_lib.parse_box(box) if box else None,
        mask=mask_array,
    )
    how = "the mask given" if picked.stability_score is None else f"SAM, stability {picked.stability_score:.3f}"
    typer.echo(f"region: bbox {list(picked.bbox)}, {picked.area} pixels ({how})", err=True)
    if search.show:
        from usesearch.indexer.export import region_picture

        typer.echo(f"wrote {region_picture(rgb, picked, search.show)}", err=True)
    hits = index.search_region(rgb, picked, **search.filters())
    search.output(hits, f"like a region of {image.name}", f"like a region of {image.name}", index)


@app.command()
@user_errors
def info(db: DbOpt, as_json: JsonOpt = False, db_url: DbUrlOpt = None, faiss_device: FaissDeviceOpt = None) -> None:
    """Images done/failed, segments, model, index type, sizes on disk, and where FAISS runs."""
    from usesearch.indexer import SegmentIndex

    stats = SegmentIndex.open(db, db_url=db_url, faiss_device=faiss_device).stats(check_files=True)
    if as_json:
        print(json.dumps(stats, indent=1, default=str))
        return
    for key, value in stats.items():
        console.print(f"{key:>16}: {value}", markup=False)


@app.command()
@user_errors
def failures(db: DbOpt, db_url: DbUrlOpt = None) -> None:
    """Each file that failed to index, with its reason."""
    from usesearch.indexer.search import open_store

    for record in open_store(db, db_url, read_only=True).failures():
        console.print(
            f"{record.path}\t{record.error_class}: {record.error_message} (attempts: {record.attempts})", markup=False
        )


@app.command("prune")
@user_errors
def prune_cmd(
    db: DbOpt,
    paths: Annotated[
        Optional[list[Path]], typer.Argument(help="Only images under these folders (default: all).")
    ] = None,
    db_url: DbUrlOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Remove them even when every file is gone (an unmounted disk?).")
    ] = False,
) -> None:
    """Remove images whose files are gone or unreadable since indexing, with their segments and vectors;
    then give back the disk their embedding rows (and those of re-indexed photos) took."""
    from usesearch.indexer import IndexOptions
    from usesearch.indexer.prune import prune

    report = prune(db, paths or None, IndexOptions(db_url=db_url), force=force)
    state = "interrupted; removals so far are kept" if report.interrupted else "finished"
    console.print(f"{state}: {report.images_removed} images removed ({report.segments_removed} segments)")
    _print_freed(report)


def _print_freed(report) -> None:
    if report.embedding_bytes_freed:
        console.print(f"embedding files: {report.embedding_bytes_freed / 2**20:.2f} MiB given back")


@app.command("reindex")
@user_errors
def reindex_cmd(
    db: DbOpt,
    factory: Annotated[
        Optional[str],
        typer.Option(
            help="FAISS index_factory string, fixed from now on (default: the automatic choice for the size now, or the fixed one kept)."
        ),
    ] = None,
    db_url: DbUrlOpt = None,
    faiss_device: FaissDeviceOpt = None,
    shard_size: ShardSizeOpt = None,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray",
            help="Fill the shards in parallel on Ray: a bare --ray starts Ray here; --ray ADDRESS joins a cluster.",
        ),
    ] = None,
) -> None:
    """Rebuild the FAISS file from the embedding files (and choose its type again)."""
    from usesearch.indexer import reindex

    if ray is None:
        console.print(f"rebuilt FAISS index with {reindex(db, factory, db_url, faiss_device, shard_size)} vectors")
        return
    from usesearch.indexer.distributed import ray_session, rebuild_on_ray

    with ray_session(ray):
        count = reindex(db, factory, db_url, faiss_device, shard_size, build=rebuild_on_ray)
    console.print(f"rebuilt FAISS index with {count} vectors, its shards filled on Ray")


@app.command()
@user_errors
def serve(
    db: DbOpt,
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
    device: DeviceOpt = None,
    faiss_device: FaissDeviceOpt = None,
    db_url: DbUrlOpt = None,
    max_per_client: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Connections one address (an IPv6 /64) may hold (default 24); 0: no limit, for a reverse proxy that limits per client itself.",
        ),
    ] = None,
) -> None:
    """Search page and JSON API over an index (docs at /docs); picks up what a running indexer adds."""
    from usesearch.indexer.web import serve as run_server

    run_server(
        db,
        host=host,
        port=port,
        token=token,
        db_url=db_url,
        device=device,
        faiss_device=faiss_device,
        per_client=max_per_client,
    )


@app.command()
@user_errors
def demo(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset to try first; falls back to tiny.")] = "b16",
    out: Annotated[Path, typer.Option(help="Folder for the sample photos and the index.")] = Path("usesearch-demo"),
    query_text: Annotated[str, typer.Argument(help="Text to search for.")] = "a cat's face",
) -> None:
    """Offline demo: index scikit-image's bundled photos and run a query."""
    from usesearch.models.presets import get_preset
    from usesearch.models.weights import preset_status

    missing = [s for s in preset_status(get_preset(preset)) if not s.present]
    if missing:
        console.print(
            f"{preset} weights are not on this machine ({', '.join(s.component for s in missing)}; "
            f"`usesearch models pull {preset}` fetches them): running with the random-weight 'tiny' preset, "
            "so the ranking below shows the pipeline working, not real matches.",
            style="yellow",
        )
        preset = "tiny"
    photos = _write_sample_photos(out / "photos")
    index(paths=[photos], db=str(out / f"db-{preset}"), preset=preset)
    query(text=query_text, db=str(out / f"db-{preset}"), k=5, per_image=True)
    console.print(
        f"Browse these segments: usesearch serve --db {out / f'db-{preset}'}  (then open http://127.0.0.1:8000)",
        markup=False,
    )


def _write_sample_photos(folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    # All shipped inside the scikit-image wheel (no download).
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "coins",
    ):
        target = folder / f"{name}.jpg"
        if not target.exists():
            photo = Image.fromarray(getattr(data, name)()).convert("RGB")
            photo.thumbnail((640, 640))
            photo.save(target, quality=92)
    return folder
