"""Auditing a labelled dataset: embed every ground-truth mask, classify it against the
dataset's own category names, and rank annotations by how strongly the model
disagrees with the label (margin = best other class's probability - the label's)."""

from __future__ import annotations

import base64
import csv
import heapq
import html
import io
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from usesearch.errors import AnnotationError, UsesearchError, first_line
from usesearch.io.atomic import write_atomic
from usesearch.io.coco_dataset import PHOTO_MISSING, CocoDataset, Problem
from usesearch.io.coco_masks import checked_masks
from usesearch.io.coco_photos import photo_path
from usesearch.io.images import read_image
from usesearch.io.own_folders import mark_audit_report
from usesearch.io.tables import text_cell
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
    # COCO RLE, for the report's tiles (the first ``masks_for`` suspects only); not in the files.
    mask: dict | None = field(repr=False, compare=False)

    def row(self) -> dict:
        """The suspect as suspects.json writes it (without its mask)."""
        out = asdict(self)
        del out["mask"]
        return out


def audit_coco(
    model: SegmentEmbedder, dataset: CocoDataset, images_dir: str | os.PathLike, masks_for: int = 50
) -> tuple[list[Suspect], list[Problem], int]:
    """All annotations, most suspect first, what could not be audited (the file's
    faults, a photo missing or unreadable, an entry whose size is not its photo's, a
    broken or empty mask; each is recorded and the rest audited) and how many crowd
    annotations were left out (one mask over many objects: its class is no single
    object's, so no margin of it means anything; ``audit --db`` leaves them out too).
    Only the ``masks_for`` most suspect keep their masks (the report's tiles): two
    thirds of a suspect's memory, 9 GB at 10^7 annotations otherwise."""
    class_names = list(dict.fromkeys(dataset.categories[c] for c in sorted(dataset.categories)))
    if len(class_names) < 2:
        raise UsesearchError(
            f"{dataset.path} names {len(class_names)} category: an audit weighs each label against the others"
            + (f" ({dataset.first_fault()})" if dataset.problems else "")
        )
    if not any(entry.annotations for entry in dataset.images):
        why = f" ({dataset.first_fault()})" if dataset.problems else ""
        raise UsesearchError(f"{dataset.path} holds no annotation to audit{why}")
    problems: list[Problem] = list(dataset.problems)
    crowd = sum(a.iscrowd for entry in dataset.images for a in entry.annotations)
    rows: list[Suspect] = []
    masked: list[tuple[float, int]] = []  # (margin, -row) of the rows holding a mask: a min-heap, worst first
    for entry in dataset.images:
        if all(a.iscrowd for a in entry.annotations):
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
        kept = [(annotation, mask) for annotation, mask in kept if not annotation.iscrowd]
        if not kept:
            continue
        masks = np.stack([rle.decode(mask) for _, mask in kept])
        probs = class_probabilities(model, rgb, masks, class_names)
        labels = np.array([class_names.index(a.category) for a, _ in kept], np.int64)
        margins, best_other = label_margins(probs, labels)
        for (annotation, mask), p, label, margin, other in zip(kept, probs, labels, margins, best_other):
            top = int(p.argmax())
            suspect = Suspect(
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
            rows.append(suspect)
            # Ties go to the earlier row, as the stable sort below orders them.
            heapq.heappush(masked, (suspect.margin, -(len(rows) - 1)))
            if len(masked) > masks_for:
                _, dropped = heapq.heappop(masked)
                rows[-dropped] = replace(rows[-dropped], mask=None)
    return sorted(rows, key=lambda r: -r.margin), problems, crowd


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
    """Each file replaced whole (streamed into a temporary file, renamed into place)."""
    out = Path(out)
    mark_audit_report(out)

    def table(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["rank", "annotation_id", "image", "labelled", "predicted", "margin"])
            for rank, s in enumerate(suspects, 1):
                row = [rank, s.annotation_id, s.image, s.labelled, s.predicted, f"{s.margin:.4f}"]
                writer.writerow([text_cell(cell) if n in (2, 3, 4) else cell for n, cell in enumerate(row)])

    def rows(tmp: Path) -> None:  # one suspect at a time: never the whole list as one string
        with open(tmp, "w") as f:
            f.write("[")
            for i, s in enumerate(suspects):
                f.write(("," if i else "") + "\n " + json.dumps(s.row()))
            f.write("\n]\n" if suspects else "]\n")

    write_atomic(out / "suspects.csv", table)
    write_atomic(out / "suspects.json", rows)
    faults = [
        {"image": image, "annotation_id": annotation, "kind": error.kind, "error": str(error)}
        for image, annotation, error in problems or []
    ]
    write_atomic(out / "problems.json", json.dumps(faults, indent=1))
    stats = summary(suspects)
    write_atomic(out / "summary.json", json.dumps(stats, indent=1))
    cards = []
    for rank, s in enumerate(suspects[:top], 1):
        buffer = io.BytesIO()
        try:
            if s.mask is None:  # past audit_coco's ``masks_for``
                raise UsesearchError("its mask was not kept")
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
    write_atomic(out / "report.html", page)
    return out
