"""CLI wiring for curation: ``usesearch curate run`` and ``usesearch curate stats``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from usesearch.cli.options import DeviceOpt, PresetOpt, console, user_errors

app = typer.Typer()

curate_app = typer.Typer(help="Curate segment-text pairs for training (paper §3.1).", no_args_is_help=True)

SOURCES = ("folder", "coco-captions", "coco-instances", "vg")


def _source(source: str, path: Path, images: Optional[Path]):
    from usesearch.curation import sources

    if source == "folder":
        return sources.folder_source(path)
    if images is None:
        raise ValueError(f"--source {source} needs --images DIR")
    readers = {
        "coco-captions": sources.coco_captions_source,
        "coco-instances": sources.coco_instances_source,
        "vg": sources.visual_genome_source,
    }
    if source not in readers:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    return readers[source](path, images)


@curate_app.command("run")
@user_errors
def run(
    path: Annotated[Path, typer.Argument(help="A folder of images, or the source's annotation JSON.", exists=True)],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (re-runs resume).")],
    source: Annotated[str, typer.Option(help=f"Source layout: {', '.join(SOURCES)}.")] = "folder",
    images: Annotated[Optional[Path], typer.Option(help="Image folder of a JSON source.", file_okay=False)] = None,
    captioner: Annotated[
        Optional[str], typer.Option(help="MLLM (transformers image-text-to-text name or folder), or 'tiny'.")
    ] = None,
    captioner_revision: Annotated[
        Optional[str], typer.Option(help="Pinned revision; required with --trust-remote-code.")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow the captioner's own code (needs a pinned revision).")
    ] = False,
    grounder: Annotated[
        str, typer.Option(help="Grounding DINO name or folder, or 'tiny'.")
    ] = "IDEA-Research/grounding-dino-tiny",
    spacy_model: Annotated[str, typer.Option(help="spaCy English pipeline for noun chunks.")] = "en_core_web_sm",
    preset: PresetOpt = None,
    sam_checkpoint: Annotated[Optional[Path], typer.Option(help="SAM checkpoint instead of the preset's.")] = None,
    pred_iou_thresh: Annotated[float, typer.Option(help="SAM predicted-IoU threshold (paper: 0.6).")] = 0.6,
    stability_thresh: Annotated[float, typer.Option(help="SAM stability threshold (paper: 0.6).")] = 0.6,
    device: DeviceOpt = None,
) -> None:
    """Curate segment-text pairs: MLLM captions, referring expressions, grounding, SAM box prompts, mask NMS."""
    from segment_anything import SamPredictor
    from tqdm import tqdm

    from usesearch.curation.masks import BoxMaskConfig
    from usesearch.curation.pipeline import curate
    from usesearch.devices import resolve_device
    from usesearch.masks.sam import load_sam
    from usesearch.models.factory import DEFAULT_PRESET
    from usesearch.models.presets import get_preset

    device = resolve_device(device)
    items = _source(source, path, images)
    needs_text = source in ("folder", "coco-captions")
    the_grounder = _grounder(grounder, spacy_model, device) if needs_text else None
    the_captioner = (
        _captioner(captioner, captioner_revision, trust_remote_code, device) if captioner and needs_text else None
    )
    if source == "folder" and the_captioner is None:
        raise ValueError("a folder has no captions: pass --captioner (a model name, or 'tiny')")
    p = get_preset(preset or DEFAULT_PRESET)
    predictor = None if source == "coco-instances" else SamPredictor(load_sam(p.sam, p.name, sam_checkpoint, device))
    bar = tqdm(unit="img", disable=None)
    report = curate(
        items,
        out,
        predictor,
        grounder=the_grounder,
        captioner=the_captioner,
        mask_config=BoxMaskConfig(pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_thresh),
        progress=lambda r: bar.update(1),
    )
    bar.close()
    console.print(
        f"{report.done} images curated, {report.skipped} skipped, {report.failed} failed: "
        f"{report.pairs} pairs, {report.pairs_after_nms} after NMS, in {report.seconds:.1f} s"
    )
    for image, reason in report.failures[:10]:
        console.print(f"  failed: {image}: {reason}", markup=False)


def _grounder(name: str, spacy_model: str, device):
    from usesearch.curation.expressions import load_parser
    from usesearch.curation.grounding import GroundingDinoGrounder

    if name == "tiny":
        from usesearch.curation.tiny import tiny_grounding_dino

        model, processor = tiny_grounding_dino()
        return GroundingDinoGrounder(model, processor, load_parser(spacy_model), device)
    return GroundingDinoGrounder.from_pretrained(name, load_parser(spacy_model), device)


def _captioner(name: str, revision: Optional[str], trust_remote_code: bool, device):
    from usesearch.curation.captioning import TransformersCaptioner

    if name == "tiny":
        from usesearch.curation.tiny import tiny_llava

        model, processor = tiny_llava()
        return TransformersCaptioner(model, processor, "tiny-llava", device, max_new_tokens=24)
    return TransformersCaptioner.from_pretrained(name, revision, trust_remote_code, device)


@curate_app.command("show")
@user_errors
def show(
    dataset: Annotated[Path, typer.Argument(help="A curated dataset folder.", exists=True, file_okay=False)],
    image: Annotated[str, typer.Argument(help="The image: its path, file name or sha256.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("curated.png"),
) -> None:
    """Draw one image's segments (masks tinted, texts written) to a PNG for eyeballing quality."""
    from usesearch.curation.show import find_record, render

    console.print(f"wrote {render(find_record(dataset, image), out)}")


@curate_app.command("stats")
@user_errors
def stats_cmd(
    dataset: Annotated[Path, typer.Argument(help="A curated dataset folder.", exists=True, file_okay=False)],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The paper's Table 1 columns (pairs, pairs after NMS, unique expressions) and per-source counts."""
    from usesearch.curation.dataset import stats

    result = stats(dataset)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        console.print(f"{key:>18}: {value}", markup=False)
