"""Source readers: each yields ``ImageItem`` records for the same pipeline (paper §3.1)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from usesearch.io.files import walk
from usesearch.masks import rle

from .records import BoxText, ImageItem, Segment, TextRef


def folder_source(folder: str | os.PathLike) -> Iterator[ImageItem]:
    """Images only: captions will come from the MLLM."""
    for found in walk([folder]):
        if found.error is None:
            yield ImageItem(path=found.fs_path, mllm_caption=True)


def coco_captions_source(captions_json: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[ImageItem]:
    """``captions_train2017.json`` layout: ground-truth captions per image."""
    coco = json.loads(Path(captions_json).read_text())
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
    coco = json.loads(Path(instances_json).read_text())
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
            segments.append(
                Segment(
                    rle=encoded,
                    bbox=tuple(rle.bbox(encoded)),
                    area=area,
                    texts=[TextRef(names[ann["category_id"]], "coco_category", "category")],
                )
            )
        yield ImageItem(path=str(Path(images_dir) / img["file_name"]), segments=segments)


__all__ = ["folder_source", "coco_captions_source", "visual_genome_source", "coco_instances_source"]
