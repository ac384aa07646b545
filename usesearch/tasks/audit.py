"""Auditing a labelled dataset: embed every ground-truth mask, classify it against the
dataset's own category names, and rank annotations by how strongly the model
disagrees with the label (margin = best other class's probability - the label's)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from usesearch.errors import AnnotationError, UsesearchError, first_line
from usesearch.io.coco_dataset import PHOTO_MISSING, CocoDataset, Problem, checked_masks, photo_path
from usesearch.io.images import read_image
from usesearch.masks import rle
from usesearch.models.model import SegmentEmbedder
from usesearch.tasks.semseg import class_probabilities
from usesearch.tasks.visualize import segment_tile


@dataclass(frozen=True)
class Suspect:
    annotation_id: int
    image: str
    labelled: str
    predicted: str
    margin: float  # > 0: the model prefers another class
    labelled_probability: float
    predicted_probability: float
    best_other: str  # the likeliest class other than the label (the margin's other side)
    mask: dict = field(repr=False, compare=False)  # COCO RLE, for the report's tiles; not in the files

    def row(self) -> dict:
        """The suspect as suspects.json writes it (without its mask)."""
        out = asdict(self)
        del out["mask"]
        return out


def audit_coco(
    model: SegmentEmbedder, dataset: CocoDataset, images_dir: str | os.PathLike
) -> tuple[list[Suspect], list[Problem]]:
    """All annotations, most suspect first, and what could not be audited: the file's
    faults, a photo missing or unreadable, an entry whose size is not its photo's, a
    broken or empty mask; each is recorded and the rest audited."""
    class_names = list(dict.fromkeys(dataset.categories[c] for c in sorted(dataset.categories)))
    if len(class_names) < 2:
        raise UsesearchError(
            f"{dataset.path} names {len(class_names)} category: an audit weighs each label against the others"
        )
    if not any(entry.annotations for entry in dataset.images):
        raise UsesearchError(f"{dataset.path} holds no annotation to audit")
    problems: list[Problem] = list(dataset.problems)
    rows: list[Suspect] = []
    for entry in dataset.images:
        if not entry.annotations:
            continue
        path = photo_path([str(images_dir)], entry.file_name)
        if path is None:
            problems.append(
                (entry.file_name, None, AnnotationError(PHOTO_MISSING, f"no {entry.file_name} under {images_dir}"))
            )
            continue
        try:
            rgb = read_image(path)
        except (OSError, UsesearchError) as exc:
            problems.append((entry.file_name, None, AnnotationError(PHOTO_MISSING, first_line(exc))))
            continue
        kept, faults = checked_masks(entry, rgb.shape[:2])
        problems += faults
        if not kept:
            continue
        masks = np.stack([rle.decode(mask) for _, mask in kept])
        probs = class_probabilities(model, rgb, masks, class_names)
        labels = np.array([class_names.index(a.category) for a, _ in kept], np.int64)
        margins, best_other = label_margins(probs, labels)
        for (annotation, mask), p, label, margin, other in zip(kept, probs, labels, margins, best_other):
            top = int(p.argmax())
            rows.append(
                Suspect(
                    annotation.id,
                    path,
                    class_names[label],
                    class_names[top],
                    float(margin),
                    float(p[label]),
                    float(p[top]),
                    class_names[other],
                    mask,
                )
            )
    return sorted(rows, key=lambda r: -r.margin), problems


def label_margins(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] class probabilities and [N] labelled classes -> (margin, best other class):
    the best other class's probability minus the label's (> 0: the model prefers another
    class). The one definition of a suspect label, here and in the index's audit."""
    labels = np.asarray(labels, np.int64)
    if not len(labels):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    rows = np.arange(len(labels))
    if probs.shape[1] < 2:  # no other class to prefer: the label itself, and the margin as if one had none
        return (-probs[rows, labels]).astype(np.float32), labels
    others = np.array(probs, np.float32, copy=True)
    others[rows, labels] = -np.inf
    best_other = others.argmax(1)
    return (probs[rows, best_other] - probs[rows, labels]).astype(np.float32), best_other


def summary(suspects: list[Suspect]) -> dict:
    per_class: dict[str, dict] = {}
    confused: Counter[tuple[str, str]] = Counter()
    for s in suspects:
        entry = per_class.setdefault(s.labelled, {"annotations": 0, "agree": 0})
        entry["annotations"] += 1
        entry["agree"] += s.predicted == s.labelled
        if s.predicted != s.labelled:
            confused[(s.labelled, s.predicted)] += 1
    for entry in per_class.values():
        entry["agreement"] = entry["agree"] / entry["annotations"]
    return {
        "annotations": len(suspects),
        "agreement": sum(s.predicted == s.labelled for s in suspects) / max(len(suspects), 1),
        "per_class": per_class,
        "most_confused": [{"labelled": a, "predicted": b, "count": n} for (a, b), n in confused.most_common(10)],
    }


def write_report(
    suspects: list[Suspect], out: str | os.PathLike, top: int = 50, problems: list[Problem] | None = None
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "suspects.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "annotation_id", "image", "labelled", "predicted", "margin"])
        for rank, s in enumerate(suspects, 1):
            writer.writerow([rank, s.annotation_id, s.image, s.labelled, s.predicted, f"{s.margin:.4f}"])
    (out / "suspects.json").write_text(json.dumps([s.row() for s in suspects], indent=1))
    faults = [
        {"image": image, "annotation_id": annotation, "kind": error.kind, "error": str(error)}
        for image, annotation, error in problems or []
    ]
    (out / "problems.json").write_text(json.dumps(faults, indent=1))
    stats = summary(suspects)
    (out / "summary.json").write_text(json.dumps(stats, indent=1))
    cards = []
    for rank, s in enumerate(suspects[:top], 1):
        buffer = io.BytesIO()
        try:
            tile = segment_tile(read_image(s.image), rle.decode(s.mask), rle.bbox(s.mask), 160)
        except (OSError, UsesearchError):  # gone since it was audited: a grey tile, the card stays
            tile = Image.new("RGB", (160, 160), (200, 200, 200))
        tile.save(buffer, "PNG")
        cards.append(
            f'<figure><img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
            f"<figcaption>#{rank} ann {s.annotation_id}<br>label <b>{html.escape(s.labelled)}</b>"
            f"<br>model <b>{html.escape(s.predicted)}</b><br>margin {s.margin:+.3f}</figcaption></figure>"
        )
    page = (
        "<!doctype html><meta charset=utf-8><title>usesearch audit</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;margin:6px;width:170px;vertical-align:top}"
        "img{width:160px;height:160px;object-fit:contain;background:#eee}</style>"
        f"<h1>Most suspect annotations</h1><p>{stats['annotations']} annotations, model agrees with "
        f"{100 * stats['agreement']:.1f}% of labels.</p>" + "".join(cards)
    )
    (out / "report.html").write_text(page)
    return out
