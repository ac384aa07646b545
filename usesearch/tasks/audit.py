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
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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


def audit_coco(model: SegmentEmbedder, coco: dict, images_dir: str | os.PathLike) -> list[Suspect]:
    """All annotations, most suspect first."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    category_ids = sorted(names)
    class_names = [names[c] for c in category_ids]
    by_image = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    rows = []
    for img in coco["images"]:
        anns = by_image.get(img["id"])
        if not anns:
            continue
        path = str(Path(images_dir) / img["file_name"])
        rgb = read_image(path)
        h, w = rgb.shape[:2]
        masks = np.stack([rle.decode(a["segmentation"], h, w) for a in anns])
        keep = np.any(masks.reshape(len(masks), -1), axis=1)
        probs = class_probabilities(model, rgb, masks[keep], class_names)
        kept = [a for a, k in zip(anns, keep) if k]
        labels = np.array([category_ids.index(a["category_id"]) for a in kept], np.int64)
        margins, _ = label_margins(probs, labels)
        for ann, p, label, margin in zip(kept, probs, labels, margins):
            top = int(p.argmax())
            rows.append(
                Suspect(
                    ann["id"], path, class_names[label], class_names[top], float(margin), float(p[label]), float(p[top])
                )
            )
    return sorted(rows, key=lambda r: -r.margin)


def label_margins(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] class probabilities and [N] labelled classes -> (margin, best other class):
    the best other class's probability minus the label's (> 0: the model prefers another
    class). The one definition of a suspect label, here and in the index's audit."""
    labels = np.asarray(labels, np.int64)
    if not len(labels):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    rows = np.arange(len(labels))
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


def write_report(suspects: list[Suspect], coco: dict, out: str | os.PathLike, top: int = 50) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "suspects.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "annotation_id", "image", "labelled", "predicted", "margin"])
        for rank, s in enumerate(suspects, 1):
            writer.writerow([rank, s.annotation_id, s.image, s.labelled, s.predicted, f"{s.margin:.4f}"])
    (out / "suspects.json").write_text(json.dumps([asdict(s) for s in suspects], indent=1))
    stats = summary(suspects)
    (out / "summary.json").write_text(json.dumps(stats, indent=1))
    anns = {a["id"]: a for a in coco["annotations"]}
    cards = []
    for rank, s in enumerate(suspects[:top], 1):
        rgb = read_image(s.image)
        ann = anns[s.annotation_id]
        mask = rle.decode(ann["segmentation"], *rgb.shape[:2])
        buffer = io.BytesIO()
        segment_tile(rgb, mask, rle.bbox(rle.encode(mask)), 160).save(buffer, "PNG")
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
