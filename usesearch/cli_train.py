"""CLI wiring for training: ``usesearch train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import DeviceOpt, PresetOpt, app, console, user_errors


@app.command()
@user_errors
def train(
    datasets: Annotated[list[Path], typer.Argument(help="Curated dataset folders (usesearch curate run).", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Run folder: head checkpoints, optimizer state, log.csv.")],
    preset: PresetOpt = None,
    epochs: Annotated[int, typer.Option(min=1)] = 5,
    batch_images: Annotated[int, typer.Option(min=1, help="Images per batch (all their segments).")] = 32,
    lr: Annotated[float, typer.Option()] = 1e-3,
    weight_decay: Annotated[float, typer.Option()] = 0.01,
    crop: Annotated[int, typer.Option(help="Random square crop after the random resize.")] = 560,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (overrides epochs).")] = None,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 500,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    device: DeviceOpt = None,
) -> None:
    """Train the USE head (LLNs, block scales, projection) with the segment-text contrastive loss."""
    from tqdm import tqdm

    from training.data import load_samples
    from training.train import TrainConfig, Trainer

    from .factory import DEFAULT_PRESET

    samples = load_samples(datasets)
    if not samples:
        raise ValueError("the datasets hold no segment with a text")
    cfg = TrainConfig(preset=preset or DEFAULT_PRESET, epochs=epochs, batch_images=batch_images, lr=lr, weight_decay=weight_decay,
                      crop=crop, max_steps=max_steps, checkpoint_every=checkpoint_every, seed=seed, device=device)
    trainer = Trainer(samples, out, cfg)
    if resume:
        trainer.resume()
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", disable=None)

    def progress(step, total, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    head = trainer.run(progress)
    bar.close()
    console.print(f"trained {trainer.step} steps on {len(samples)} images; head: {head} (use it with --head {out / 'head'})")


def _classes(classes: Optional[str], classes_file: Optional[Path]) -> list[str]:
    names = [c.strip() for c in (classes or "").split(",") if c.strip()]
    if classes_file:
        names += [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError("give class names with --classes 'sky,tree,...' or --classes-file")
    return names


def _segmenter(preset, embedder, heads, masker, points_per_side, device):
    """The models (one per --head: their class probabilities are averaged, the
    paper's ensemble of curated-data and COCO heads) and the masker."""
    from .factory import choose_preset, load_model, resolve_embedder
    from .maskers import build_masker

    heads = [str(h) for h in heads or []] or [None]
    models = []
    for head in heads:
        name = choose_preset(preset, head)
        models.append(load_model(name, embedder=resolve_embedder(name, embedder, head), device=device, head=head))
    options = {"points_per_side": points_per_side} if (masker or "sam") == "sam" and points_per_side else {}
    return models, build_masker(masker, models[0].preset, device, **options)


HeadsOpt = Annotated[Optional[list[Path]], typer.Option(
    "--head", help="Head checkpoint; repeat to ensemble several (class probabilities averaged).")]
MaskerOpt = Annotated[Optional[str], typer.Option(help="sam | felzenszwalb (default: sam; felzenszwalb for tiny).")]
EmbedOpt = Annotated[Optional[str], typer.Option("--embedder", help="use | crop (default: use where a head exists).")]


@app.command()
@user_errors
def segment(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Label map PNG: class index per pixel, 255 where no mask covers it.")],
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names.")] = None,
    classes_file: Annotated[Optional[Path], typer.Option(help="One class name per line.", exists=True)] = None,
    overlay: Annotated[Optional[Path], typer.Option(help="PNG of the image coloured by class, with a legend.")] = None,
    preset: PresetOpt = None,
    embedder: EmbedOpt = None,
    head: HeadsOpt = None,
    masker: MaskerOpt = None,
    points_per_side: Annotated[Optional[int], typer.Option()] = None,
    device: DeviceOpt = None,
) -> None:
    """Open-vocabulary semantic segmentation of one image (paper §4.3)."""
    import numpy as np
    from PIL import Image

    from .images import read_image
    from .maskers import stack_masks
    from .semseg import save_label_map, segment_image
    from .visualize import label_overlay

    names = _classes(classes, classes_file)
    models, mask_proposer = _segmenter(preset, embedder, head, masker, points_per_side, device)
    rgb = read_image(image)
    proposals = mask_proposer(rgb, str(image))
    masks = stack_masks(proposals, rgb.shape[:2])
    labels = segment_image(models, rgb, masks, names)
    save_label_map(labels, out)
    if overlay:
        label_overlay(rgb, labels, names).save(overlay)
    present = [names[i] for i in np.unique(labels) if i < len(names)]
    console.print(f"{len(proposals)} masks; classes found: {', '.join(present) or 'none'}; wrote {out}", markup=False)


eval_app = typer.Typer(help="Evaluate on benchmarks (paper §4.3, §4.4).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("semseg")
@user_errors
def eval_semseg(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    labels: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Label PNGs named like the images.")],
    classes_file: Annotated[Path, typer.Option("--classes", exists=True, help="One class name per line, in label order.")],
    ignore_index: Annotated[int, typer.Option(help="Ground-truth value to ignore (ADE-847 conversions use 65535).")] = 255,
    reduce_zero_label: Annotated[bool, typer.Option(help="ADE20K: label 0 is 'other' (ignored), classes start at 1.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json")] = None,
    preset: PresetOpt = None,
    embedder: EmbedOpt = None,
    head: HeadsOpt = None,
    masker: MaskerOpt = None,
    points_per_side: Annotated[Optional[int], typer.Option()] = None,
    device: DeviceOpt = None,
) -> None:
    """mIoU over a dataset in the ADE20K / Pascal Context layout."""
    import json

    import numpy as np
    from PIL import Image

    from .images import read_image
    from .maskers import stack_masks
    from .semseg import confusion, miou, read_label_map, segment_image

    names = _classes(None, classes_file)
    models, mask_proposer = _segmenter(preset, embedder, head, masker, points_per_side, device)
    matrix = np.zeros((len(names), len(names) + 1), np.int64)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in files:
        gt = read_label_map(labels / f"{path.stem}.png")
        if reduce_zero_label:
            gt = np.where(gt == 0, ignore_index, gt - 1)
        rgb = read_image(path)
        masks = stack_masks(mask_proposer(rgb, str(path)), rgb.shape[:2])
        matrix += confusion(segment_image(models, rgb, masks, names), gt, len(names), ignore_index)
    mean, per_class = miou(matrix)
    fingerprint = "+".join(m.fingerprint for m in models)
    result = {"mIoU": mean, "images": len(files), "model": fingerprint,
              "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, per_class)}}
    for name, value in result["per_class"].items():
        console.print(f"{name:>24}: {'-' if value is None else f'{100 * value:.1f}'}", markup=False)
    console.print(f"{'mIoU':>24}: {100 * mean:.2f}  ({len(files)} images, {fingerprint})", markup=False)
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))


@eval_app.command("parts")
@user_errors
def eval_parts(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    coco_json: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="PartImageNet-style COCO annotations of the parts.")],
    json_out: Annotated[Optional[Path], typer.Option("--json")] = None,
    preset: PresetOpt = None,
    embedder: EmbedOpt = None,
    head: HeadsOpt = None,
    masker: MaskerOpt = None,
    points_per_side: Annotated[Optional[int], typer.Option()] = None,
    device: DeviceOpt = None,
) -> None:
    """Part segmentation mAP@[0.5:0.95] (paper §4.4): parts vs. COCO-stuff and super-category background classes."""
    import contextlib
    import io
    import json

    import numpy as np
    from pycocotools.coco import COCO

    from .images import read_image
    from .maskers import stack_masks
    from .parts import background_classes, mask_map, part_detections, to_results
    from .semseg import class_probabilities

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_json))
    category_ids = sorted(coco.cats)
    parts = [coco.cats[c]["name"] for c in category_ids]
    names = parts + background_classes()
    models, mask_proposer = _segmenter(preset, embedder, head, masker, points_per_side, device)
    results = []
    for image_id in sorted(coco.imgs):
        rgb = read_image(images / coco.imgs[image_id]["file_name"])
        masks = stack_masks(mask_proposer(rgb, coco.imgs[image_id]["file_name"]), rgb.shape[:2])
        if not len(masks):
            continue
        detections = part_detections(class_probabilities(models, rgb, masks, names), len(parts))
        results += to_results(image_id, masks, detections, category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        overall, per_category = mask_map(coco, results)
    for name, ap in per_category.items():
        console.print(f"{name:>28}: {100 * ap:.1f}", markup=False)
    fingerprint = "+".join(m.fingerprint for m in models)
    console.print(f"{'mAP_mask@[0.5:0.95]':>28}: {100 * overall:.2f}  ({len(results)} part detections, {fingerprint})", markup=False)
    if json_out:
        json_out.write_text(json.dumps({"mAP": overall, "per_category": per_category, "detections": len(results)}, indent=1))


@app.command()
@user_errors
def audit(
    coco: Annotated[Path, typer.Option("--coco", exists=True, dir_okay=False, help="COCO annotations to audit.")],
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for suspects.csv/.json, summary.json and report.html.")] = Path("audit"),
    top: Annotated[int, typer.Option(help="Suspects shown in the HTML report.")] = 50,
    preset: PresetOpt = None,
    embedder: EmbedOpt = None,
    head: Annotated[Optional[Path], typer.Option()] = None,
    device: DeviceOpt = None,
) -> None:
    """Rank ground-truth annotations by how strongly the model disagrees with their labels."""
    import json

    from .audit import audit_coco, write_report
    from .factory import choose_preset, load_model, resolve_embedder

    preset = choose_preset(preset, head)
    model = load_model(preset, embedder=resolve_embedder(preset, embedder, head), device=device, head=head)
    data = json.loads(coco.read_text())
    suspects = audit_coco(model, data, images)
    write_report(suspects, data, out, top)
    for rank, s in enumerate(suspects[:10], 1):
        console.print(f"{rank:>3}  ann {s.annotation_id}: labelled {s.labelled!r}, model says {s.predicted!r} (margin {s.margin:+.3f})", markup=False)
    console.print(f"wrote {out}/suspects.csv, summary.json, report.html", markup=False)
