"""CLI wiring for segmenting and evaluating: ``segment``, ``eval semseg``, ``eval parts``, ``eval audit``."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from usesearch.cli import options as opts
from usesearch.cli import sam_options
from usesearch.cli.class_lists import class_list, refuse_twice_named, report_names
from usesearch.cli.eval_report import TAKING_OLD_JSON_FILE, Report, Walk, with_report
from usesearch.cli.photo_limits import PhotoLimits, with_photo_limits
from usesearch.errors import UsesearchError
from usesearch.io.atomic import save_picture
from usesearch.io.coco_json import load_coco_json
from usesearch.masks.settings import SamSettings
from usesearch.reports import counted

app = opts.Typer()
eval_app = opts.Typer(help="Evaluate on benchmarks (paper §4.3, §4.4) and audit datasets.", no_args_is_help=True)


@dataclass(frozen=True)
class Segmenter:
    """The model options segment and eval share, declared once (``with_segmenter``)."""

    preset: opts.PresetOpt = None
    embedder: opts.EmbedderOpt = None
    head: opts.HeadsOpt = None
    masker: opts.PhotoMaskerOpt = None
    device: opts.DeviceOpt = None
    precision: opts.PrecisionOpt = "auto"

    def check(self, sam: SamSettings | None = None) -> None:
        """What cannot work, said before any model loads: SAM's settings ``sam`` too,
        where the masker does not take them."""
        from usesearch.devices import resolve_device, uses_bf16
        from usesearch.models.weights import refuse_missing_clip

        if not self.head:  # (a head names its own preset, read with it)
            refuse_missing_clip(self.preset)
        if self.masker == "coco":  # its masks come from a COCO file, which only `index` takes
            raise UsesearchError(
                "--masker coco reads a COCO file's masks, given to `index --coco FILE.json --masker coco`; "
                "here use sam, sam2 or felzenszwalb"
            )
        if sam is not None and not self.head:  # (a head names its preset, and so its default masker)
            from usesearch.masks.registry import check_masker_for

            check_masker_for(self.masker, self.preset, sam.given())
        uses_bf16(resolve_device(self.device), self.precision)  # (torch's import: last)

    def build(self, sam: SamSettings, photos: int):
        """The models (one per --head: their class probabilities are averaged, the
        paper's ensemble of curated-data and COCO heads) and the masker, compiled as a
        command of ``photos`` photos compiles (``devices.compiles``: on a GPU nothing for
        one photo, where SAM's default compiling would cost ~23 s; everything for a
        dataset of 1,000 photos or more)."""
        self.check(sam)  # (before the model libraries import: seconds)

        from usesearch.devices import compiles, resolve_device
        from usesearch.masks.registry import build_masker
        from usesearch.models.compiling import apply_compile
        from usesearch.models.factory import choose_preset, load_model
        from usesearch.models.presets import resolve_embedder

        models = []
        heads: list[str | None] = [str(h) for h in self.head or []] or [None]
        for head in heads:
            name = choose_preset(self.preset, head)
            embedder = resolve_embedder(name, self.embedder, head)
            models.append(load_model(name, embedder=embedder, device=self.device, head=head, precision=self.precision))
        masker = build_masker(self.masker, models[0].preset, self.device, self.precision, **sam.given())
        apply_compile(compiles(None, resolve_device(self.device).type, photos), models, masker)
        return models, masker


with_segmenter = opts.shared_options("segmenter", Segmenter)


def _read_and_mask(path: Path | str, masker, name: str | None = None):
    """One image file -> (RGB, its masks [N, H, W]), read with the indexer's safeguards
    (a regular file, its size, no decompression bomb): a FIFO named as an image hung for ever."""
    from usesearch.io.files import read_photo
    from usesearch.masks.proposals import stack_masks

    rgb = read_photo(path, name)
    return rgb, stack_masks(masker(rgb, name or str(path)), rgb.shape[:2])


@app.command()
@opts.user_errors
@with_segmenter
@sam_options.with_sam_settings
@with_photo_limits
def segment(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    out: Annotated[
        Path, opts.out_file("Label map PNG: class index per pixel (8 or 16 bit); 255 / 65535 where no mask covers it.")
    ],
    classes: opts.ClassesOpt = None,
    classes_file: opts.ClassesFileOpt = None,
    overlay: Annotated[
        Optional[Path],
        typer.Option(
            help="Picture of the image coloured by class, with a legend (.png, .jpg, .webp or .tiff, by its name).",
            callback=opts.picture_file,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (classes found, files written).")
    ] = False,
    *,
    segmenter: Segmenter,
    sam: SamSettings,
    limits: PhotoLimits,
) -> None:
    """Open-vocabulary semantic segmentation of one image (paper §4.3)."""
    from usesearch.io.atomic import is_own_stdout, is_stream, written_by_usesearch
    from usesearch.io.files import own_picture_error

    if out.suffix.lower() != ".png" and not is_stream(out):  # JPEG would invent class ids between the real ones
        raise UsesearchError(f"--out {out}: write a .png (a label map must keep its exact values)")
    names = class_list(classes, classes_file)
    refuse_twice_named(names, "--classes-file" if classes_file else "--classes")
    inputs = {"image": image, "--classes-file": classes_file}
    opts.refuse_overwriting({"--out": out, "--overlay": overlay}, inputs)
    segmenter.check(sam)
    if written_by_usesearch(image):  # (as index and curate refuse one): a label map segmented gave another
        raise own_picture_error(str(image), "segment", "give a photo first: `usesearch segment PHOTO --out MAP.png`")
    rgb = limits.read(image)  # a FIFO, a bomb, a broken file: refused before the models load

    import numpy as np

    from usesearch.masks.proposals import stack_masks
    from usesearch.tasks.semseg import save_label_map, segment_image
    from usesearch.tasks.visualize import label_overlay

    models, mask_proposer = segmenter.build(sam, photos=1)
    masks = stack_masks(mask_proposer(rgb, str(image)), rgb.shape[:2])
    labels = segment_image(models, rgb, masks, names)
    save_label_map(labels, out)
    if overlay:
        try:
            save_picture(label_overlay(rgb, labels, names).convert("RGB"), overlay)
        except BaseException:
            out.unlink(missing_ok=True)  # no label map from a run that failed
            raise
    ids, pixels = np.unique(labels, return_counts=True)
    present = [names[i] for i in ids if i < len(names)]
    # `--out /dev/stdout > map.png`: the picture alone on stdout, what is said of it on stderr.
    piped = any(path is not None and is_own_stdout(path) for path in (out, overlay))
    if as_json:  # per class found: its id in the label map and the share of the photo it covers
        found = [
            {"class": names[i], "id": int(i), "pixels": int(n), "fraction": round(int(n) / labels.size, 6)}
            for i, n in zip(ids, pixels)
            if i < len(names)
        ]
        print(
            json.dumps(
                {
                    "image": str(image),
                    "label_map": str(out),
                    "overlay": overlay and str(overlay),
                    "masks": len(masks),
                    "classes": found,
                },
                indent=1,
            ),
            file=sys.stderr if piped else sys.stdout,
        )
    wrote = f"{out} and {overlay}" if overlay else str(out)
    console = opts.err_console if piped else opts.console
    console.print(f"{counted(len(masks), 'mask')}; classes found: {', '.join(present) or 'none'}; wrote {wrote}")
    if not len(masks) and segmenter.preset == "tiny" and (segmenter.masker or "").startswith("sam"):
        named = "SAM 2" if segmenter.masker == "sam2" else "SAM"  # (sam2's hint named SAM)
        console.print(
            f"  no masks: the tiny preset's {named} has random weights; its default masker, felzenszwalb, needs none"
        )


@eval_app.command("semseg", context_settings=TAKING_OLD_JSON_FILE)
@opts.user_errors
@with_segmenter
@sam_options.with_sam_settings
@with_report
def eval_semseg(
    ctx: typer.Context,
    images: opts.ImagesOpt,
    labels: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Label PNGs named like the images (8 or 16 bit).")
    ],
    classes: opts.ClassesOpt = None,
    classes_file: opts.ClassesFileOpt = None,
    ignore_index: Annotated[
        int,
        typer.Option(
            min=0, max=65535, help="Ground-truth value to ignore (ADE-847 conversions use 65535)."
        ),  # (what a label PNG holds: -5 was taken, and named in a later error)
    ] = 255,
    reduce_zero_label: Annotated[
        bool, typer.Option(help="ADE20K: label 0 is 'other' (ignored), classes start at 1.")
    ] = False,
    *,
    segmenter: Segmenter,
    sam: SamSettings,
    report: Report,
) -> None:
    """mIoU over a dataset in the ADE20K / Pascal Context layout."""
    import numpy as np

    from usesearch.tasks.semseg import (
        check_ground_truth,
        confusion,
        ground_truth_pairs,
        miou,
        read_ground_truth,
        segment_image,
    )

    report = report.taking(ctx.args)
    if classes and "," not in classes and Path(classes).is_file():
        opts.deprecated("`eval semseg --classes FILE` is now `--classes-file FILE`")
        classes_file = Path(classes)
        classes = None
    names = class_list(classes, classes_file)
    opts.refuse_overwriting(
        {"--out": report.out}, {"--images": images, "--labels": labels, "--classes-file": classes_file}
    )
    pairs = ground_truth_pairs(images, labels)
    check_ground_truth(pairs, len(names), ignore_index, reduce_zero_label)
    models, mask_proposer = segmenter.build(sam, photos=len(pairs))
    matrix = np.zeros((len(names), len(names) + 1), np.int64)
    with (walk := Walk(pairs)):
        for path, label in walk:
            rgb, masks = _read_and_mask(path, mask_proposer)
            gt = read_ground_truth(label, rgb.shape[:2], len(names), ignore_index, reduce_zero_label)
            matrix += confusion(segment_image(models, rgb, masks, names), gt, len(names), ignore_index)
    mean, per_class = miou(matrix)
    fingerprint = "+".join(m.fingerprint for m in models)
    scores = {n: (None if np.isnan(v) else float(v)) for n, v in zip(report_names(names), per_class)}
    # No image scored (interrupted first): no mean, null in JSON (NaN is none: RFC 8259 parsers refuse it).
    scored = None if np.isnan(mean) else float(mean)
    result = {"mIoU": scored, "images": walk.done, "model": fingerprint, "per_class": scores, **walk.partial()}
    shown = "-" if scored is None else f"{100 * scored:.2f}"
    done = counted(walk.done, "image")
    total = ("mIoU", f"{shown}  ({walk.said(f'{done}, {fingerprint}')})")
    report.write(result, scores, total)
    walk.exit_if_interrupted()


@eval_app.command("parts", context_settings=TAKING_OLD_JSON_FILE)
@opts.user_errors
@with_segmenter
@sam_options.with_sam_settings
@with_report
def eval_parts(
    ctx: typer.Context,
    images: opts.ImagesOpt,
    coco: opts.CocoOpt,
    *,
    segmenter: Segmenter,
    sam: SamSettings,
    report: Report,
) -> None:
    """Part segmentation mAP@[0.5:0.95] (paper §4.4): parts vs. COCO-stuff and super-category background classes."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from usesearch.tasks.parts import background_classes, check_ground_truth, mask_map, part_detections, to_results
    from usesearch.tasks.semseg import class_probabilities

    report = report.taking(ctx.args)
    opts.refuse_overwriting({"--out": report.out}, {"--images": images, "--coco": coco})
    load_coco_json(coco)  # one line for a file that is not COCO, before pycocotools and the models
    check_ground_truth(coco, images)
    with contextlib.redirect_stdout(io.StringIO()):
        annotations = COCO(str(coco))
    category_ids = sorted(annotations.cats)
    parts = [annotations.cats[c]["name"] for c in category_ids]
    names = parts + background_classes()
    models, mask_proposer = segmenter.build(sam, photos=len(annotations.imgs))
    results, image_ids = [], sorted(annotations.imgs)
    with (walk := Walk(image_ids)):
        for image_id in walk:
            name = annotations.imgs[image_id]["file_name"]
            rgb, masks = _read_and_mask(images / name, mask_proposer, name)
            if not len(masks):
                continue
            detections = part_detections(class_probabilities(models, rgb, masks, names), len(parts))
            results += to_results(image_id, masks, detections, category_ids)
    scored_any = walk.done > 0  # (interrupted before the first image: no score, where 0.0 read as one)
    with contextlib.redirect_stdout(io.StringIO()):
        measured, per_category = mask_map(annotations, results, image_ids[: walk.done])  # the images evaluated
    overall = measured if scored_any else None
    if not scored_any:
        per_category = dict.fromkeys(per_category)
    fingerprint = "+".join(m.fingerprint for m in models)
    result = {"mAP": overall, "per_category": per_category, "detections": len(results), "model": fingerprint}
    said = walk.said(f"{len(results)} part detections, {fingerprint}")
    shown = "-" if overall is None else f"{100 * overall:.2f}"
    report.write({**result, **walk.partial()}, per_category, ("mAP_mask@[0.5:0.95]", f"{shown}  ({said})"))
    walk.exit_if_interrupted()


@eval_app.command("audit")
@opts.user_errors
def audit(
    coco: opts.CocoOpt,
    images: opts.ImagesOpt,
    report_dir: Annotated[
        Path,
        typer.Option(
            "--report-dir",
            help="Folder for suspects.csv, suspects.json, problems.json, summary.json and report.html.",
            callback=opts.folder_for("an audit report"),
        ),
        opts.Formerly("--out"),
    ] = Path("audit"),
    k: opts.TopKOpt = 50,
    preset: opts.PresetOpt = None,
    embedder: opts.EmbedderOpt = None,
    head: opts.HeadOpt = None,
    device: opts.DeviceOpt = None,
    precision: opts.PrecisionOpt = "auto",
    as_json: opts.JsonOpt = False,
) -> None:
    """Rank ground-truth annotations by how strongly the model disagrees with their labels."""
    from usesearch.io.coco_dataset import read_coco, refuse_when_no_photo
    from usesearch.models.factory import choose_preset, load_model
    from usesearch.models.presets import resolve_embedder
    from usesearch.tasks.audit import audit_coco, summary, write_report

    opts.refuse_report_in_an_index(report_dir)
    data = read_coco(coco)  # before the model: a file that is not COCO is one line, as is a wrong --images
    refuse_when_no_photo(data, [str(images)], outcome="nothing is audited")
    preset = choose_preset(preset, head)
    embedder = resolve_embedder(preset, embedder, head)
    model = load_model(preset, embedder=embedder, device=device, head=head, precision=precision)
    suspects, problems, crowd = audit_coco(model, data, images, masks_for=k)
    write_report(suspects, report_dir, k, problems)
    for rank, s in enumerate(suspects[: min(k, 10)], 1):
        says = f"model says {s.predicted!r}" if s.margin > 0 else f"model agrees (next {s.best_other!r})"
        opts.console.print(
            f"{rank:>3}  ann {s.annotation_id}: labelled {s.labelled!r}, {says} (margin {s.margin:+.3f})"
        )
    disagreeing = sum(s.margin > 0 for s in suspects)
    opts.console.print(
        f"the model prefers another class for {disagreeing} of {len(suspects)} annotations"
        + (f" ({crowd} crowd, left out)" if crowd else "")
        + f"; wrote {report_dir}/"
        f"suspects.csv and suspects.json (all ranked), problems.json, summary.json, report.html (the top "
        f"{min(k, len(suspects))})"
    )
    if problems:
        from usesearch.io.coco_dataset import PHOTO_MISSING

        missing = {file_name for file_name, _, error in problems if error.kind == PHOTO_MISSING}
        lost = sum(  # (crowds: counted apart, as left out)
            sum(not a.iscrowd for a in entry.annotations) for entry in data.images if entry.file_name in missing
        )
        opts.console.print(
            f"{len(problems)} annotation(s) or photo(s) could not be audited"
            + (f" ({counted(lost, 'annotation')} on the photos missing or unreadable)" if lost else "")
            + ": listed in problems.json"
        )
    if as_json:  # the summary and the top k; every suspect is in suspects.json
        top = [s.row() for s in suspects[:k]]
        said = {"report_dir": str(report_dir), **summary(suspects), "crowd_left_out": crowd, "problems": len(problems)}
        print(json.dumps({**said, "top": top}))


@functools.wraps(audit)
def old_audit(*args: Any, **kwargs: Any) -> None:
    """The old spelling ``audit --coco FILE --images DIR``: ``audit`` is now the index's
    audit (``cli/audit.py``), which hands such a command line here (``app.py`` wires it)."""
    opts.deprecated("`usesearch audit` is now `usesearch eval audit`")
    audit(*args, **kwargs)
