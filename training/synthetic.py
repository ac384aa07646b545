"""A synthetic world to prove training learns without real data: coloured shapes,
some built of parts (a house = body + roof), on textured backgrounds, with exact
masks and texts, written in the curation dataset format."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from usesearch.curation.dataset import DatasetWriter
from usesearch.curation.masks import to_segment
from usesearch.curation.records import TextRef
from usesearch.io.files import read_bytes
from usesearch.masks import rle
from usesearch.tasks.shapes import background, shape_mask

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (235, 215, 30)}
SHAPES = ("circle", "square", "triangle")


def class_texts() -> list[str]:
    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return names + [f"the {c} house" for c in COLOURS] + [f"the roof of the {c} house" for c in COLOURS]


def scene(rng: np.random.Generator, size: int = 128):
    """-> (RGB, [(mask, [texts])]) with 2-3 objects in free cells of a 2x2 layout."""
    rgb = background(rng, size)
    cell = size // 2
    objects = []
    for cx, cy in rng.permutation([(0, 0), (1, 0), (0, 1), (1, 1)])[: rng.integers(2, 4)]:
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        s = int(rng.integers(cell * 5 // 10, cell * 8 // 10))
        x0 = int(cx * cell + rng.integers(2, cell - s - 1))
        y0 = int(cy * cell + rng.integers(2, cell - s - 1))
        if rng.random() < 0.25:  # a house: a body and a roof of another shade
            body = shape_mask("square", (x0, y0 + s // 2, x0 + s, y0 + s), size)
            roof = shape_mask("triangle", (x0, y0, x0 + s, y0 + s // 2), size) & ~body
            rgb[body] = COLOURS[colour]
            rgb[roof] = (np.asarray(COLOURS[colour]) * 0.55).astype(np.uint8)
            objects.append((body | roof, [f"the {colour} house"]))
            objects.append((roof, [f"the roof of the {colour} house"]))
        else:
            kind = SHAPES[rng.integers(len(SHAPES))]
            mask = shape_mask(kind, (x0, y0, x0 + s, y0 + s), size)
            rgb[mask] = COLOURS[colour]
            objects.append((mask, [f"{colour} {kind}", f"a {colour} {kind}"]))
    return rgb, objects


def write_dataset(out: str | os.PathLike, n_images: int, seed: int = 0, size: int = 128) -> Path:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    writer = DatasetWriter(out, settings={"synthetic": {"seed": seed, "size": size}})
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        rgb, objects = scene(rng, size)
        path = out / "images" / f"{seed}-{i:05d}.png"
        Image.fromarray(rgb).save(path)
        segments = [to_segment(m, [TextRef(t, "gt_caption", "expression") for t in texts], 1.0) for m, texts in objects]
        writer.write(str(path), read_bytes(str(path))[1], rgb.shape[:2], segments, len(segments))
    writer.close()
    return out


def top1_accuracy(model, dataset_dir: str | os.PathLike) -> float:
    """Held-out segment -> text top-1 accuracy among all class texts."""
    from usesearch.training.data import load_image, load_samples

    names = class_texts()
    text = model.embed_text(names)
    correct = total = 0
    for sample in load_samples([dataset_dir]):
        rgb, masks = load_image(sample)
        predicted = (model.embed_segments(rgb, masks) @ text.T).argmax(1)
        for pred, texts in zip(predicted, sample.texts):
            correct += names[pred] == texts[0]
            total += 1
    return correct / max(total, 1)


def semseg_classes() -> list[str]:
    return ["background"] + [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f"{c} house" for c in COLOURS]


def write_semseg(out: str | os.PathLike, n_images: int, seed: int = 0, size: int = 128) -> Path:
    """ADE20K-like layout: images/NAME.png, labels/NAME.png (class index per pixel), classes.txt."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    names = semseg_classes()
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        rgb, objects = scene(rng, size)
        label = np.zeros(rgb.shape[:2], np.uint8)
        for mask, texts in objects:
            name = texts[0].removeprefix("the ")
            if name in names:  # roofs are part of their house's class
                label[mask] = names.index(name)
        Image.fromarray(rgb).save(out / "images" / f"{i:05d}.png")
        Image.fromarray(label).save(out / "labels" / f"{i:05d}.png")
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    return out


def _annotation(annotation_id: int, image_id: int, category: int, mask: np.ndarray) -> dict[str, Any]:
    """A COCO annotation of one mask, its segmentation an RLE."""
    encoded = rle.encode(mask)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category,
        "iscrowd": 0,
        "area": float(rle.area(encoded)),
        "bbox": [float(v) for v in rle.bbox(encoded)],
        "segmentation": encoded,
    }


def write_parts_coco(out: str | os.PathLike, n_images: int, seed: int = 0, size: int = 128) -> Path:
    """PartImageNet-like COCO file: every house's roof and body as part annotations."""

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "roof"}, {"id": 2, "name": "wall"}]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    while len(images) < n_images:
        rgb, objects = scene(rng, size)
        roofs = [m for m, texts in objects if texts[0].startswith("the roof")]
        if not roofs:
            continue
        houses = [m for m, texts in objects if texts[0].startswith("the ") and "roof" not in texts[0]]
        image_id = len(images) + 1
        Image.fromarray(rgb).save(out / "images" / f"{image_id:05d}.png")
        images.append({"id": image_id, "file_name": f"{image_id:05d}.png", "height": size, "width": size})
        parts = [(1, r) for r in roofs] + [(2, h & ~r) for h, r in zip(houses, roofs)]
        for category, mask in parts:
            annotations.append(_annotation(len(annotations) + 1, image_id, category, mask))
    path = out / "parts.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_instances_coco(
    out: str | os.PathLike, n_images: int, seed: int = 0, wrong_fraction: float = 0.15, size: int = 128
) -> tuple[Path, set[int]]:
    """COCO instances of the synthetic shapes with a fraction of labels deliberately wrong.
    Returns the JSON path and the ids of the planted wrong annotations."""

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = semseg_classes()[1:]
    categories: list[dict[str, Any]] = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    rng = np.random.default_rng(seed)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    planted: set[int] = set()
    for i in range(n_images):
        rgb, objects = scene(rng, size)
        Image.fromarray(rgb).save(out / "images" / f"{i:05d}.png")
        images.append({"id": i + 1, "file_name": f"{i:05d}.png", "height": size, "width": size})
        for mask, texts in objects:
            name = texts[0].removeprefix("the ")
            if name not in names:
                continue  # roofs are parts, not instances
            category = names.index(name) + 1
            if rng.random() < wrong_fraction:
                category = int(rng.choice([c["id"] for c in categories if c["id"] != category]))
                planted.add(len(annotations) + 1)
            annotations.append(_annotation(len(annotations) + 1, i + 1, category, mask))
    path = out / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, planted
