"""CLI wiring for curation: ``usesearch curate run`` and ``usesearch curate stats``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import DeviceOpt, PresetOpt, app, console, user_errors

curate_app = typer.Typer(help="Curate segment-text pairs for training (paper §3.1).", no_args_is_help=True)
app.add_typer(curate_app, name="curate")

SOURCES = ("coco-instances", "vg")


@curate_app.command("run")
@user_errors
def run(
    source: Annotated[str, typer.Option(help=f"Source layout: {', '.join(SOURCES)}.")],
    annotations: Annotated[Path, typer.Option(help="The source's JSON (COCO instances, or VG region_descriptions).", exists=True)],
    images: Annotated[Path, typer.Option(help="Folder holding the source's images.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (resumable).")],
    preset: PresetOpt = "tiny",
    sam_checkpoint: Annotated[Optional[Path], typer.Option(help="SAM checkpoint instead of the preset's.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Turn a source into segment-text pairs: human boxes through SAM box prompts, human masks as they are, then mask NMS."""
    from tqdm import tqdm

    from curation.pipeline import curate
    from curation.sources import coco_instances_source, visual_genome_source

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)} (captioned sources need the grounding stage)")
    items = coco_instances_source(annotations, images) if source == "coco-instances" else visual_genome_source(annotations, images)
    predictor = None
    if source == "vg":
        from segment_anything import SamPredictor

        from .factory import resolve_device
        from .presets import get_preset
        from .sam import load_sam

        p = get_preset(preset)
        predictor = SamPredictor(load_sam(p.sam, p.name, sam_checkpoint, resolve_device(device)))
    bar = tqdm(unit="img", disable=None)
    report = curate(items, out, predictor, progress=lambda r: bar.update(1))
    bar.close()
    console.print(
        f"{report.done} images curated, {report.skipped} skipped, {report.failed} failed: "
        f"{report.pairs} pairs, {report.pairs_after_nms} after NMS, in {report.seconds:.1f} s"
    )


@curate_app.command("stats")
@user_errors
def stats_cmd(
    dataset: Annotated[Path, typer.Argument(help="A curated dataset folder.", exists=True, file_okay=False)],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The paper's Table 1 columns (pairs, pairs after NMS, unique expressions) and per-source counts."""
    from curation.dataset import stats

    result = stats(dataset)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        console.print(f"{key:>18}: {value}", markup=False)
