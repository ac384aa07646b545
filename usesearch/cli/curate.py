"""CLI wiring for curation: ``usesearch curate run``, ``curate show`` and ``curate stats``."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from usesearch.cli import options as opts
from usesearch.cli import sam_options
from usesearch.cli.photo_limits import PhotoLimits, say_past_limits, with_photo_limits
from usesearch.curation.sources import SOURCES
from usesearch.errors import DiskFullError, UsesearchError, is_disk_full
from usesearch.io.files import one_line
from usesearch.masks.settings import SamSettings
from usesearch.reports import counted

if TYPE_CHECKING:
    from usesearch.curation.records import ImageItem

app = opts.Typer()

curate_app = opts.Typer(help="Curate segment-text pairs for training (paper §3.1).", no_args_is_help=True)

DEFAULT_GROUNDER = "IDEA-Research/grounding-dino-tiny"  # Swin-T, the paper's (§4.1)
CURATION_PRESET = "l14-336"  # its SAM is ViT-H, the paper's for curation (§4.1); index's default stays b16

# SAM's settings that box prompts take (sam_options.BOX_PROMPT_SETTINGS), by the names of BoxMaskConfig.
BOX_MASK_CONFIG_NAMES = {"min_mask_region_area": "min_region_area"}


@curate_app.command("run")
@opts.user_errors
@sam_options.with_box_prompt_settings
@with_photo_limits
def run(
    path: Annotated[
        Path, typer.Argument(help="A folder of images, or the annotation file --input-format names.", exists=True)
    ],
    dataset_dir: Annotated[
        Path,
        typer.Option(
            "--dataset-dir",
            help="Dataset folder to write (re-runs resume).",
            callback=opts.folder_for("a curated dataset"),
        ),
        opts.Formerly("--out"),
    ],
    input_format: Annotated[
        str,
        typer.Option(help="What PATH is: " + "; ".join(f"{n}: {s.description}" for n, s in SOURCES.items())),
        opts.Formerly("--source"),  # query's --source is a segment's origin (annotation|proposal)
    ] = "folder",
    images: opts.MaybeImagesOpt = None,
    captioner: Annotated[
        Optional[str],
        typer.Option(
            help="MLLM (transformers image-text-to-text name or folder), or 'tiny'; "
            "needed for --input-format folder (photos have no captions of their own)."
        ),
    ] = None,
    captioner_revision: Annotated[
        Optional[str], typer.Option(help="Pinned revision; required with --trust-remote-code.")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow the captioner's own code (needs a pinned revision).")
    ] = False,
    grounder: Annotated[str, typer.Option(help="Grounding DINO name or folder, or 'tiny'.")] = DEFAULT_GROUNDER,
    spacy_model: Annotated[str, typer.Option(help="spaCy English pipeline for noun chunks.")] = "en_core_web_sm",
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            "-p",
            help="Preset whose SAM the boxes prompt: l14-336 (SAM ViT-H, as the paper curates, §4.1), "
            "b16 (ViT-B: faster, coarser masks), or tiny (random weights, for trials).",
            callback=opts.known_preset,
        ),
    ] = CURATION_PRESET,
    sam_checkpoint: Annotated[Optional[Path], typer.Option(help="SAM checkpoint instead of the preset's.")] = None,
    device: opts.DeviceOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's report as JSON on stdout (status lines go to stderr).")
    ] = False,
    *,
    sam: SamSettings,
    limits: PhotoLimits,
) -> None:
    """Curate segment-text pairs: MLLM captions, referring expressions, grounding, SAM box prompts, mask NMS."""

    from segment_anything import SamPredictor
    from tqdm import tqdm

    from usesearch.curation.dataset import check_dataset_folder
    from usesearch.curation.masks import BoxMaskConfig
    from usesearch.curation.pipeline import CurateReport, curate
    from usesearch.curation.sources import read_source
    from usesearch.devices import resolve_device
    from usesearch.masks.sam import load_sam, sam_identity
    from usesearch.models.presets import get_preset

    check_dataset_folder(dataset_dir)  # before any model loads
    mask_config = BoxMaskConfig(**{BOX_MASK_CONFIG_NAMES.get(name, name): value for name, value in sam.given().items()})
    kind = SOURCES.get(input_format)
    if kind is not None:
        _refuse_unused(input_format, kind, sam, sam_checkpoint, captioner, grounder)
    if kind is not None and not kind.annotations and images is not None:  # (taken silently: the photos are PATH's)
        raise UsesearchError(
            f"--input-format {input_format} curates the photos under {path}: --images names an annotation file's "
            "photos; leave it out"
        )
    if kind is not None and not kind.annotations and path.is_file():
        raise UsesearchError(
            f"{path} is a file and --input-format {input_format} reads a folder of photos; for an annotation file "
            f"give its --input-format ({', '.join(n for n, k in SOURCES.items() if k.annotations)})"
        )
    if kind is not None and kind.annotations and path.is_dir():  # ("error: photos: Is a directory")
        raise UsesearchError(
            f"{path} is a folder and --input-format {input_format} reads its annotation file "
            f"({kind.description}); the photos' folder is --images"
        )
    the_device = resolve_device(device)
    p = get_preset(preset)
    # The input read up to its first photo (a file that is not of its format refused) before any model loads.
    items = _from_the_start(lambda: read_source(input_format, path, images), path, input_format, images)
    kind = SOURCES[input_format]
    if kind.needs_captioner and not captioner:
        raise ValueError(f"a {input_format} has no captions: pass --captioner (a model name, or 'tiny')")
    # SAM first: missing weights are refused before a captioner's gigabytes load.
    predictor = SamPredictor(load_sam(p.sam, p.name, sam_checkpoint, the_device)) if kind.prompts_sam else None
    sam_weights = sam_identity(p.sam, sam_checkpoint) if kind.prompts_sam else None  # masks of one SAM a dataset
    the_grounder = _grounder(grounder, spacy_model, the_device) if kind.grounded else None
    the_captioner = (
        _captioner(captioner, captioner_revision, trust_remote_code, the_device)
        if captioner and kind.grounded
        else None
    )
    bar = tqdm(unit="img", disable=None)
    so_far = CurateReport()  # the run's own report, as it goes: what an interrupted run says

    def progress(report: CurateReport) -> None:
        nonlocal so_far
        so_far = report
        bar.update(1)

    try:
        report = curate(
            items,
            dataset_dir,
            predictor,
            grounder=the_grounder,
            captioner=the_captioner,
            mask_config=mask_config if kind.prompts_sam else None,
            source=input_format,
            progress=progress,
            sam=sam_weights,
            run=f"--input-format {input_format} {path.resolve()}",
            max_bytes=limits.max_bytes,
            max_pixels=limits.max_pixels,
        )
    except KeyboardInterrupt:
        bar.close()
        opts.console.print(
            f"interrupted; finished work is kept: {counted(so_far.done, 'image')} curated, {so_far.skipped} skipped, "
            f"{so_far.failed} failed; the same command again finishes it (it resumes)"
        )
        if as_json:
            from dataclasses import asdict

            print(json.dumps({**asdict(so_far), "interrupted": True}, indent=1))
        raise typer.Exit(130) from None
    except Exception as exc:
        if is_disk_full(exc):  # (it said only "[Errno 28] No space left on device")
            bar.close()
            raise DiskFullError(
                f"disk full: cannot write the dataset in {dataset_dir}; free space and run the same command "
                f"again (it resumes: {so_far.done} photos curated by this run are kept)"
            ) from None
        raise
    bar.close()
    missing = f" ({report.missing} missing under --images)" if report.missing else ""
    opts.console.print(
        f"{counted(report.done, 'image')} curated, {report.skipped} skipped, {report.failed} failed{missing}: "
        f"{counted(report.pairs, 'pair')}, {report.pairs_after_nms} after NMS, in {report.seconds:.1f} s"
    )
    opts.say_pairs(
        report.copies,
        (
            "skipped as a copy of a photo curated under another path",
            "skipped as copies of photos curated under other paths",
        ),
    )
    if report.uncaptioned:
        opts.console.print(
            f"  {report.uncaptioned} photo(s) skipped as done were curated before this dataset had a captioner: "
            "they keep no MLLM caption (a record is never rewritten); curate into a new --dataset-dir to caption them"
        )
    opts.say_failures(report.failures)
    say_past_limits(report.failures)
    if report.done and not report.pairs_after_nms and kind.prompts_sam and not report.boxes:
        opts.console.print("no pair was kept: no box reached SAM (no region in the source, none grounded in its texts)")
    elif report.done and not report.pairs_after_nms and kind.prompts_sam:
        weights = "the tiny preset's random-weight SAM" if p.name == "tiny" else "SAM"
        opts.console.print(
            f"no pair was kept: {weights} gave no mask that passes --pred-iou-thresh and --stability-score-thresh "
            f"({mask_config.pred_iou_thresh}, {mask_config.stability_score_thresh}); "
            + ("-10 for both keeps every mask (a plumbing check)" if p.name == "tiny" else "lower them to keep more")
            + f", into a new --dataset-dir ({dataset_dir} is curated with these)"
        )
    if report.failed or report.problems:
        faults = f"{report.problems} fault(s) in the source's annotations" if report.problems else "the failures"
        opts.console.print(f"{faults}: listed in {dataset_dir / 'failures.jsonl'}")
    if as_json:
        from dataclasses import asdict

        print(json.dumps(asdict(report), indent=1))
    opts.exit_if_all_failed(report.done, report.skipped, report.failed, "photo", "nothing is curated")


AHEAD_KEPT = 1000  # items held while looking for the first photo (~1 KB each); past them, read again


def _from_the_start(
    read: Callable[[], Iterator[ImageItem]], path: Path, input_format: str, images: Optional[Path]
) -> Iterator[ImageItem]:
    """The source's items, once it is known to hold a photo to curate: read up to its
    first one. Refused in one line where it holds none: an empty folder, or a file none
    of whose photos is under --images (a wrong folder, most often; "0 images curated",
    exit 0, read as success), as ``index --coco`` refuses such a folder. The items before
    the first photo are held up to ``AHEAD_KEPT`` (a file whose photos all come last held
    every missing one: ~1 GB at 10^6); past that the source is read again from its start."""
    items = read()
    ahead: list[ImageItem] = []
    seen = missing = 0
    first_missing = None
    for item in items:
        seen += 1
        if seen <= AHEAD_KEPT:
            ahead.append(item)
        if item.photo:
            return itertools.chain(ahead, items) if seen <= AHEAD_KEPT else read()
        if item.missing:
            missing += 1
            first_missing = first_missing or item
    if first_missing is not None:
        name = one_line(str(first_missing.problems[0][0] if first_missing.problems else first_missing.path))
        photos = (
            f"the photo {path} names ({name}) is not"
            if missing == 1
            else f"none of the {missing} photos {path} names ({name}, ...) is"
        )
        raise UsesearchError(f"{photos} under --images {images}; nothing is curated")
    if not seen:
        raise UsesearchError(f"{path}: --input-format {input_format} found no photo to curate there")
    return iter(ahead) if seen <= AHEAD_KEPT else read()  # (failures only: each is recorded)


def _refuse_unused(source: str, kind, sam: SamSettings, sam_checkpoint, captioner, grounder: str) -> None:
    """A flag this source's pipeline never reads is refused: taken silently, it would be
    written into the manifest as if it had shaped the data."""
    unused = []
    if not kind.prompts_sam:
        unused += [SamSettings.flag(name) for name in sam.given()] + ["--sam-checkpoint"] * bool(sam_checkpoint)
    if not kind.grounded:
        unused += ["--captioner"] * bool(captioner) + ["--grounder"] * (grounder != DEFAULT_GROUNDER)
    if unused:
        does = "has its own masks (SAM does not run)" if not kind.prompts_sam else "has its own texts"
        them = "them" if len(unused) > 1 else "it"
        raise UsesearchError(f"--input-format {source} {does}: {', '.join(unused)} would do nothing; leave {them} out")


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


SHOWN = "curated.png"  # `curate show`'s picture when no --out is given


@curate_app.command("show")
@opts.user_errors
def show(
    dataset: Annotated[Path, typer.Argument(help="A curated dataset folder.", exists=True, file_okay=False)],
    image: Annotated[str, typer.Argument(help="The image: its path, file name or sha256.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            dir_okay=False,
            help=(
                "Picture to write (.png, .jpg, .webp or .tiff, by its name; replaced if usesearch wrote it). "
                f"Default: {SHOWN} here, never replaced."
            ),
            callback=opts.picture_file,
        ),
    ] = None,
) -> None:
    """Draw one image's segments (masks tinted, texts written) to a picture for eyeballing quality."""
    from usesearch.curation.show import find_record, render

    if out is None:
        out = Path(SHOWN)
        if os.path.lexists(out):  # a default must not replace a file nobody named
            from usesearch.io.atomic import written_by_usesearch

            replaces = f"`--out {SHOWN}` replaces it, or " if written_by_usesearch(out) else ""
            raise UsesearchError(f"{SHOWN} exists here: {replaces}name another file")
    record = find_record(dataset, image)
    opts.refuse_overwriting({"--out": out}, {"photo": Path(record["path"])})
    written = render(record, out)
    if record["segments"]:
        texts = sum(len(segment["texts"]) for segment in record["segments"])
        opts.console.print(f"wrote {written}: {counted(len(record['segments']), 'segment')}, {counted(texts, 'text')}")
    else:
        opts.console.print(f"wrote {written}: {record['path']} has no segment in the dataset (its photo alone)")


@curate_app.command("stats")
@opts.user_errors
def stats_cmd(
    dataset: Annotated[Path, typer.Argument(help="A curated dataset folder.", exists=True, file_okay=False)],
    as_json: opts.JsonOpt = False,
) -> None:
    """The paper's Table 1 columns (pairs, pairs after NMS, unique expressions) and per-source counts."""
    from usesearch.curation.dataset import stats

    result = stats(dataset)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        opts.console.print(f"{key:>18}: {opts.shown(value)}")
