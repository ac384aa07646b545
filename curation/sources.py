"""Source readers, each yielding ``ImageItem`` records for the same pipeline (paper
§3.1), and their registry ``SOURCES``, which the CLI reads (``curate run --source``).

Light to import: the CLI lists the sources in its help before any model is loaded,
so the readers import the file walker and the RLE module (torch, pycocotools) when
they run."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from usesearch.io.coco_json import load_coco_json

from .records import BoxText, ImageItem, Segment, TextRef


def folder_source(folder: str | os.PathLike) -> Iterator[ImageItem]:
    """Images only: captions will come from the MLLM."""
    from usesearch.io.files import walk

    for found in walk([folder]):
        if found.error is None:
            yield ImageItem(path=found.fs_path, mllm_caption=True)


def coco_captions_source(captions_json: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[ImageItem]:
    """``captions_train2017.json`` layout: ground-truth captions per image."""
    coco = load_coco_json(captions_json, ("images", "annotations"))
    captions = defaultdict(list)
    for ann in coco["annotations"]:
        captions[ann["image_id"]].append(TextRef(ann["caption"].strip(), "gt_caption", "caption"))
    for img in sorted(coco["images"], key=lambda i: i["id"]):
        yield ImageItem(path=str(Path(images_dir) / img["file_name"]), captions=captions[img["id"]], mllm_caption=True)


def visual_genome_source(
    region_descriptions_json: str | os.PathLike, images_dir: str | os.PathLike
) -> Iterator[ImageItem]:
    """VG ``region_descriptions.json``: human box-text pairs, straight to SAM (no captioning, no grounding)."""
    for entry in json.loads(Path(region_descriptions_json).read_text()):
        regions = entry.get("regions", [])
        if not regions:
            continue
        image_id = regions[0]["image_id"]
        boxes = [
            BoxText((r["x"], r["y"], r["width"], r["height"]), [TextRef(r["phrase"].strip(), "vg", "region")])
            for r in regions
            if r["phrase"].strip() and r["width"] > 0 and r["height"] > 0
        ]
        yield ImageItem(path=str(Path(images_dir) / f"{image_id}.jpg"), boxes=boxes)


def coco_instances_source(instances_json: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[ImageItem]:
    """COCO instance annotations: ground-truth masks with category names, already segment-text pairs."""
    from usesearch.masks import rle

    coco = load_coco_json(instances_json)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = defaultdict(list)
    for ann in coco["annotations"]:
        anns[ann["image_id"]].append(ann)
    for img in sorted(coco["images"], key=lambda i: i["id"]):
        h, w = img["height"], img["width"]
        segments = []
        for ann in anns[img["id"]]:
            encoded = rle.to_str(rle.segmentation_to_rle(ann["segmentation"], h, w))
            area = rle.area(encoded)
            if area == 0:
                continue
            x, y, bw, bh = rle.bbox(encoded)
            segments.append(
                Segment(
                    rle=encoded,
                    bbox=(x, y, bw, bh),
                    area=area,
                    texts=[TextRef(names[ann["category_id"]], "coco_category", "category")],
                )
            )
        yield ImageItem(path=str(Path(images_dir) / img["file_name"]), segments=segments)


@dataclass(frozen=True)
class Source:
    """One source of ``SOURCES``: its reader and what the pipeline needs for it."""

    read: Callable[..., Iterator[ImageItem]]
    description: str
    # The path given is an annotation JSON and the images are in a folder of their
    # own (``read(json, images_dir)``); else the path is the image folder (``read(folder)``).
    annotations: bool = True
    # Its texts are captions whose phrases Grounding DINO boxes (a grounder is needed,
    # and MLLM captions may be added).
    grounded: bool = False
    # It has no text of its own: every caption comes from the MLLM.
    needs_captioner: bool = False
    # Its boxes prompt SAM; False: its masks are given.
    prompts_sam: bool = True


SOURCES: dict[str, Source] = {
    "folder": Source(
        folder_source,
        "a folder of images, captioned by the MLLM",
        annotations=False,
        grounded=True,
        needs_captioner=True,
    ),
    "coco-captions": Source(coco_captions_source, "COCO captions JSON (captions_train2017.json)", grounded=True),
    "coco-instances": Source(coco_instances_source, "COCO instances JSON: masks and category names", prompts_sam=False),
    "vg": Source(visual_genome_source, "Visual Genome region_descriptions.json: box-text pairs"),
}


def read_source(name: str, path: str | os.PathLike, images: str | os.PathLike | None = None) -> Iterator[ImageItem]:
    """The items of source ``name`` (a key of ``SOURCES``) at ``path``."""
    source = SOURCES.get(name)
    if source is None:
        raise ValueError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    if not source.annotations:
        return source.read(path)
    if images is None:
        raise ValueError(f"--source {name} needs --images DIR")
    return source.read(path, os.path.abspath(images))  # each item's path absolute: a dataset read from anywhere


__all__ = [
    "SOURCES",
    "Source",
    "coco_captions_source",
    "coco_instances_source",
    "folder_source",
    "read_source",
    "visual_genome_source",
]
