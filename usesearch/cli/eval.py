"""CLI wiring for segmenting and evaluating: ``segment``, ``eval semseg``, ``eval parts``,
``eval audit``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from usesearch.cli.options import DeviceOpt, PresetOpt, console, shared_options, user_errors

app = typer.Typer()

HeadsOpt = Annotated[
    Optional[list[Path]],
    typer.Option("--head", help="Head checkpoint; repeat to ensemble several (class probabilities averaged)."),
]
MaskerOpt = Annotated[Optional[str], typer.Option(help="sam | felzenszwalb (default: sam; felzenszwalb for tiny).")]
EmbedOpt = Annotated[Optional[str], typer.Option("--embedder", help="use | crop (default: use where a head exists).")]
PointsOpt = Annotated[Optional[int], typer.Option(min=1, help="SAM: grid prompts per side (default 32).")]
ClassesOpt = Annotated[Optional[str], typer.Option(help="Class names, comma-separated.")]
ClassesFileOpt = Annotated[
    Optional[Path], typer.Option(help="Class names, one per line (in label order).", exists=True, dir_okay=False)
]
CocoOpt = Annotated[Path, typer.Option("--coco", exists=True, dir_okay=False, help="COCO annotations JSON.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
OutJsonOpt = Annotated[Optional[Path], typer.Option("--out", help="Also write the result as a JSON file.")]

eval_app = typer.Typer(help="Evaluate on benchmarks (paper §4.3, §4.4) and audit datasets.", no_args_is_help=True)


def _classes(classes: Optional[str], classes_file: Optional[Path]) -> list[str]:
    names = [c.strip() for c in (classes or "").split(",") if c.strip()]
    if classes_file:
        names += [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError("give class names with --classes 'sky,tree,...' or --classes-file FILE")
    return names


@dataclass
class Segmenter:
    """The model options segment and eval share, declared once (``with_segmenter``)."""

    preset: Optional[str] = None
    embedder: Optional[str] = None
    head: Optional[list[Path]] = None
    masker: Optional[str] = None
    points_per_side: Optional[int] = None
    device: Optional[str] = None

    def build(self):
        """The models (one per --head: their class probabilities are averaged, the
        paper's ensemble of curated-data and COCO heads) and the masker."""
        from usesearch.masks.maskers import build_masker
        from usesearch.models.factory import choose_preset, load_model, resolve_embedder

        models = []
        for head in [str(h) for h in self.head or []] or [None]:
            name = choose_preset(self.preset, head)
            models.append(
                load_model(name, embedder=resolve_embedder(name, self.embedder, head), device=self.device, head=head)
            )
        options = (
            {"points_per_side": self.points_per_side}
            if (self.masker or "sam") == "sam" and self.points_per_side
            else {}
        )
        return models, build_masker(self.masker, models[0].preset, self.device, **options)


with_segmenter = shared_options(
    "segmenter",
    Segmenter,
    {
        "preset": (PresetOpt, None),
        "embedder": (EmbedOpt, None),
        "head": (HeadsOpt, None),
        "masker": (MaskerOpt, None),
        "points_per_side": (PointsOpt, None),
        "device": (DeviceOpt, None),
    },
)


def _read_and_mask(path: Path | str, masker, name: str | None = None):
    """One image file -> (RGB, its masks [N, H, W])."""
    from usesearch.io.images import read_image
    from usesearch.masks.maskers import stack_masks

    rgb = read_image(path)
    return rgb, stack_masks(masker(rgb, name or str(path)), rgb.shape[:2])


def _report(
    result: dict, as_json: bool, out: Optional[Path], rows: dict[str, float | None], total: tuple[str, str]
) -> None:
    if out:
        out.write_text(json.dumps(result, indent=1))
    if as_json:
        print(json.dumps(result, indent=1))
        return
    width = max([len(total[0]), *map(len, rows)]) + 2
    for name, value in rows.items():
        console.print(f"{name:>{width}}: {'-' if value is None else f'{100 * value:.1f}'}", markup=False)
    console.print(f"{total[0]:>{width}}: {total[1]}", markup=False)


@app.command()
@user_errors
@with_segmenter
def segment(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    out: Annotated[
        Path,
        typer.Option(help="Label map PNG: class index per pixel (8 or 16 bit); 255 / 65535 where no mask covers it."),
    ],
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    overlay: Annotated[Optional[Path], typer.Option(help="PNG of the image coloured by class, with a legend.")] = None,
    *,
    segmenter: Segmenter,
) -> None:
    """Open-vocabulary semantic segmentation of one image (paper §4.3)."""
    import numpy as np

    from usesearch.tasks.semseg import save_label_map, segment_image
    from usesearch.tasks.visualize import label_overlay

    names = _classes(classes, classes_file)
    models, mask_proposer = segmenter.build()
    rgb, masks = _read_and_mask(image, mask_proposer)
    labels = segment_image(models, rgb, masks, names)
    save_label_map(labels, out)
    if overlay:
        label_overlay(rgb, labels, names).save(overlay)
    present = [names[i] for i in np.unique(labels) if i < len(names)]
    console.print(f"{len(masks)} masks; classes found: {', '.join(present) or 'none'}; wrote {out}", markup=False)


@eval_app.command("semseg")
@user_errors
@with_segmenter
def eval_semseg(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    labels: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Label PNGs named like the images (8 or 16 bit).")
    ],
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    ignore_index: Annotated[
        int, typer.Option(help="Ground-truth value to ignore (ADE-847 conversions use 65535).")
    ] = 255,
    reduce_zero_label: Annotated[
        bool, typer.Option(help="ADE20K: label 0 is 'other' (ignored), classes start at 1.")
    ] = False,
    as_json: JsonOpt = False,
    out: OutJsonOpt = None,
    *,
    segmenter: Segmenter,
) -> None:
    """mIoU over a dataset in the ADE20K / Pascal Context layout."""
    import numpy as np

    from usesearch.tasks.semseg import confusion, miou, read_label_map, segment_image

    names = _classes(classes, classes_file)
    models, mask_proposer = segmenter.build()
    matrix = np.zeros((len(names), len(names) + 1), np.int64)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in files:
        gt = read_label_map(labels / f"{path.stem}.png")
        if reduce_zero_label:
            gt = np.where(gt == 0, ignore_index, gt - 1)
        rgb, masks = _read_and_mask(path, mask_proposer)
        matrix += confusion(segment_image(models, rgb, masks, names), gt, len(names), ignore_index)
    mean, per_class = miou(matrix)
    fingerprint = "+".join(m.fingerprint for m in models)
    per_class = {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, per_class)}
    result = {"mIoU": mean, "images": len(files), "model": fingerprint, "per_class": per_class}
    _report(result, as_json, out, per_class, ("mIoU", f"{100 * mean:.2f}  ({len(files)} images, {fingerprint})"))


@eval_app.command("parts")
@user_errors
@with_segmenter
def eval_parts(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    coco: CocoOpt,
    as_json: JsonOpt = False,
    out: OutJsonOpt = None,
    *,
    segmenter: Segmenter,
) -> None:
    """Part segmentation mAP@[0.5:0.95] (paper §4.4): parts vs. COCO-stuff and super-category background classes."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from usesearch.tasks.parts import background_classes, mask_map, part_detections, to_results
    from usesearch.tasks.semseg import class_probabilities

    with contextlib.redirect_stdout(io.StringIO()):
        annotations = COCO(str(coco))
    category_ids = sorted(annotations.cats)
    parts = [annotations.cats[c]["name"] for c in category_ids]
    names = parts + background_classes()
    models, mask_proposer = segmenter.build()
    results = []
    for image_id in sorted(annotations.imgs):
        name = annotations.imgs[image_id]["file_name"]
        rgb, masks = _read_and_mask(images / name, mask_proposer, name)
        if not len(masks):
            continue
        detections = part_detections(class_probabilities(models, rgb, masks, names), len(parts))
        results += to_results(image_id, masks, detections, category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        overall, per_category = mask_map(annotations, results)
    fingerprint = "+".join(m.fingerprint for m in models)
    result = {"mAP": overall, "per_category": per_category, "detections": len(results), "model": fingerprint}
    _report(
        result,
        as_json,
        out,
        per_category,
        ("mAP_mask@[0.5:0.95]", f"{100 * overall:.2f}  ({len(results)} part detections, {fingerprint})"),
    )


@eval_app.command("audit")
@user_errors
def audit(
    coco: CocoOpt,
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for suspects.csv/.json, summary.json and report.html.")] = Path(
        "audit"
    ),
    k: Annotated[int, typer.Option("-k", min=1, help="Suspects shown in the HTML report.")] = 50,
    preset: PresetOpt = None,
    embedder: EmbedOpt = None,
    head: Annotated[Optional[Path], typer.Option(help="Head checkpoint.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Rank ground-truth annotations by how strongly the model disagrees with their labels."""
    from usesearch.models.factory import choose_preset, load_model, resolve_embedder
    from usesearch.tasks.audit import audit_coco, write_report

    preset = choose_preset(preset, head)
    model = load_model(preset, embedder=resolve_embedder(preset, embedder, head), device=device, head=head)
    data = json.loads(coco.read_text())
    suspects = audit_coco(model, data, images)
    write_report(suspects, data, out, k)
    for rank, s in enumerate(suspects[:10], 1):
        console.print(
            f"{rank:>3}  ann {s.annotation_id}: labelled {s.labelled!r}, model says {s.predicted!r} (margin {s.margin:+.3f})",
            markup=False,
        )
    console.print(f"wrote {out}/suspects.csv, summary.json, report.html", markup=False)
