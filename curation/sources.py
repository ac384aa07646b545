"""Source readers, each yielding ``ImageItem`` records for the same pipeline (paper
§3.1), and their registry ``SOURCES``, which the CLI reads (``curate run --input-format``).

Light to import: the CLI lists the sources in its help before any model is loaded,
so the readers import the file walker, the COCO reader and the RLE module (torch,
pycocotools) when they run."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usesearch.errors import AnnotationError, CocoFileError, UsesearchError, first_line
from usesearch.io.coco_json import load_coco_json

if TYPE_CHECKING:
    from usesearch.io.coco_dataset import ImageEntry, Problem

from .records import BoxText, ImageItem, Segment, TextRef


def folder_source(folder: str | os.PathLike) -> Iterator[ImageItem]:
    """Images only: captions will come from the MLLM."""
    from usesearch.io.files import walk

    for found in walk([folder]):  # a folder it cannot list is a failure of its own, as the indexer records it
        yield ImageItem(path=found.fs_path, mllm_caption=found.error is None, error=found.error)


def coco_captions_source(captions_json: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[ImageItem]:
    """``captions_train2017.json`` layout: ground-truth captions per image. A caption
    that is not one is recorded (the rest are curated); a file with none at all (an
    instances file given by mistake) is refused in one line."""
    from usesearch.io.coco_dataset import one_entry_a_photo
    from usesearch.io.coco_photos import photo_path

    coco = load_coco_json(captions_json, ("images", "annotations"))
    captions: defaultdict[Any, list[TextRef]] = defaultdict(list)
    loose: list[Problem] = []
    for ann in coco["annotations"]:
        text = ann.get("caption") if isinstance(ann, dict) else None
        if isinstance(text, str) and text.strip() and _is_key(ann.get("image_id")):
            captions[ann["image_id"]].append(TextRef(text.strip(), "gt_caption", "caption"))
        elif isinstance(text, str) and isinstance(ann, dict) and _is_key(ann.get("image_id")):
            loose.append(_broken(None, f"an empty caption (image_id {ann['image_id']!r}): {ann!r}"))
        else:
            loose.append(_broken(None, f"not a caption with an image_id: {ann!r}"))
    if coco["annotations"] and not captions:
        raise CocoFileError(
            f"{captions_json} holds no caption: for a COCO instances file use --input-format coco-instances"
        )
    entries = [img for img in coco["images"] if isinstance(img, dict) and _is_key(img.get("id"))]
    loose += [_broken(None, f"an image entry without id: {img!r}") for img in coco["images"] if img not in entries]
    known = {img["id"] for img in entries}  # (dropped unsaid before)
    loose += [
        _broken(None, f"{len(texts)} caption(s) of image_id {key!r}, which no image entry has")
        for key, texts in captions.items()
        if key not in known
    ]
    if loose:
        yield ImageItem(path=str(captions_json), problems=loose, photo=False)
    named: list[_CaptionEntry] = []
    nameless: list[ImageItem] = []
    for img in sorted(entries, key=lambda i: str(i["id"])):
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:  # (a photo "None" was missing)
            problems = [_broken(None, f"image {img['id']!r} has no file_name")]
            nameless.append(ImageItem(str(captions_json), problems=problems, photo=False))
            continue
        named.append(_CaptionEntry(img["id"], img["file_name"], list(captions.get(img["id"], []))))
    # Entries naming one file are one photo with all their captions, as an instances
    # file's are: else the second was skipped as curated and its captions lost unsaid.
    repeats: list[Problem] = []
    kept = one_entry_a_photo(named, repeats, captions=True)
    said: defaultdict[str, list[Problem]] = defaultdict(list)
    for problem in repeats:
        said[os.path.normpath(str(problem[0]))].append(problem)
    for entry in kept:
        problems = said.pop(os.path.normpath(entry.file_name), [])
        path = photo_path([str(images_dir)], entry.file_name)
        if path is None:
            missing = _missing(captions_json, images_dir, entry.file_name)
            missing.problems.extend(problems)
            yield missing
            continue
        yield ImageItem(path=path, captions=entry.annotations, mllm_caption=True, problems=problems)
    yield from nameless


@dataclass
class _CaptionEntry:
    """A captions file's image entry, its captions as its annotations (for ``one_entry_a_photo``;
    no size: a text holds at any)."""

    id: Any
    file_name: str
    annotations: list[TextRef]
    height: int | None = None
    width: int | None = None


def visual_genome_source(
    region_descriptions_json: str | os.PathLike, images_dir: str | os.PathLike
) -> Iterator[ImageItem]:
    """VG ``region_descriptions.json``: human box-text pairs, straight to SAM (no
    captioning, no grounding). Streamed (the file is ~700 MB); photos are looked for in
    ``images_dir`` and its subfolders (VG ships them as ``VG_100K`` and ``VG_100K_2``);
    a region without a phrase or a box is recorded and the image's others are kept."""
    import ijson

    folders = [str(images_dir), *sorted(str(p) for p in Path(images_dir).iterdir() if p.is_dir())]
    with open(region_descriptions_json, "rb") as f:
        if f.read(64).lstrip()[:1] != b"[":
            raise CocoFileError(
                f"{region_descriptions_json} is not Visual Genome's region_descriptions.json (a list of images)"
            )
        f.seek(0)
        try:
            for entry in ijson.items(f, "item", use_float=True):
                yield from _vg_item(entry, folders, region_descriptions_json)
        except ijson.JSONError as exc:  # past the photos read so far: they stay curated
            raise CocoFileError(
                f"{region_descriptions_json} is not valid JSON ({first_line(exc)}): the file is damaged or cut "
                "short; the photos before the damage are curated; restore the file and run again to finish"
            ) from None


def _vg_item(entry: Any, folders: list[str], source: str | os.PathLike) -> Iterator[ImageItem]:
    regions = entry.get("regions") if isinstance(entry, dict) else None
    if not isinstance(regions, list):
        yield ImageItem(path=str(source), problems=[_broken(None, f"not an image's regions: {entry!r}")], photo=False)
        return
    from usesearch.io.coco_photos import photo_path

    image_id = entry.get("id", regions[0].get("image_id") if regions and isinstance(regions[0], dict) else None)
    if not regions or not _is_key(image_id):
        return
    boxes, problems, region_ids = [], [], set()
    for r in regions:
        try:
            x, y, w, h = (float(r[key]) for key in ("x", "y", "width", "height"))
            phrase = r["phrase"].strip()
        except (KeyError, TypeError, ValueError, AttributeError):
            problems.append(_broken(f"{image_id}.jpg", f"a region without a phrase and a box: {r!r}"))
            continue
        region_id = r.get("region_id")
        if _is_key(region_id) and region_id in region_ids:  # (its pair twice: trained on twice as often)
            problems.append(_broken(f"{image_id}.jpg", f"a region repeating region_id {region_id}, dropped: {r!r}"))
            continue
        region_ids.add(region_id)
        if phrase and w > 0 and h > 0:
            boxes.append(BoxText((x, y, w, h), [TextRef(phrase, "vg", "region")]))
        else:  # (dropped unsaid before)
            why = "an empty phrase" if not phrase else f"a box of no area ({w:g}x{h:g})"
            problems.append(_broken(f"{image_id}.jpg", f"a region with {why}: {r!r}"))
    path = photo_path(folders, f"{image_id}.jpg")
    if path is None:
        yield _missing(source, folders[0], f"{image_id}.jpg")
        return
    yield ImageItem(path=path, boxes=boxes, problems=problems)


def coco_instances_source(instances_json: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[ImageItem]:
    """COCO instance annotations: ground-truth masks with category names, already
    segment-text pairs. Read and checked as ``index --coco`` reads them; the masks are
    made in the pipeline at the photo's real size (``annotation_segments``)."""
    from usesearch.io.coco_dataset import read_coco
    from usesearch.io.coco_photos import photo_path

    dataset = read_coco(instances_json)
    if not any(entry.annotations for entry in dataset.images):
        # Else each photo was curated with no pair and the run exited 0; the file then
        # fixed, the folder refused it as other annotations of the same photos.
        why = "its categories list is empty" if not dataset.categories else dataset.first_fault() or "it annotates none"
        raise UsesearchError(
            f"{Path(instances_json).name} has no annotation to curate ({why}): nothing is curated; fix the file"
        )
    by_photo: defaultdict[str | None, list[Problem]] = defaultdict(list)
    for problem in dataset.problems:  # by the file as the merged entries name it ("./a.jpg" is "a.jpg")
        by_photo[problem[0] and os.path.normpath(problem[0])].append(problem)
    if by_photo.get(None):
        yield ImageItem(path=str(instances_json), problems=by_photo.pop(None), photo=False)
    for entry in dataset.images:
        problems = by_photo.pop(os.path.normpath(entry.file_name), [])
        path = photo_path([str(images_dir)], entry.file_name)
        if path is None:
            missing = _missing(instances_json, images_dir, entry.file_name)
            missing.problems.extend(problems)
            yield missing
            continue
        yield ImageItem(path=path, annotations=entry, problems=problems)
    # Faults of no kept entry's file (an entry dropped as a repeated id): recorded all the same.
    left = [problem for problems in by_photo.values() for problem in problems]
    if left:
        yield ImageItem(path=str(instances_json), problems=left, photo=False)


def annotation_segments(entry: ImageEntry, hw: tuple[int, int]) -> tuple[list[Segment], list[Problem]]:
    """A COCO entry's annotations as segments, their masks checked at the photo's size
    ``hw`` (``io.coco_masks.checked_masks``), and the faults found."""
    from usesearch.io.coco_masks import checked_masks
    from usesearch.masks import rle

    kept, problems = checked_masks(entry, hw)
    segments = []
    for annotation, mask in kept:
        x, y, w, h = rle.bbox(mask)
        # A crowd region (iscrowd=1: many people under one "person") is tagged, not dropped: the
        # shard keeps no iscrowd, and a researcher who leaves them out needs to know them.
        text = TextRef(annotation.category, "coco_category", "crowd" if annotation.iscrowd else "category")
        segments.append(Segment(rle=mask, bbox=(x, y, w, h), area=rle.area(mask), texts=[text]))
    return segments, problems


def _is_key(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _broken(file_name: str | None, message: str) -> Problem:
    from usesearch.io.coco_dataset import BROKEN_ANNOTATION

    return file_name, None, AnnotationError(BROKEN_ANNOTATION, message[:200])


def _missing(source: str | os.PathLike, images_dir: str | os.PathLike, file_name: str) -> ImageItem:
    """A photo the file names and the folder lacks (or a name leading out of it): recorded
    as a fault of the file's, and counted as a photo failed (``CurateReport.missing``)."""
    from usesearch.io.coco_dataset import PHOTO_MISSING

    fault = AnnotationError(PHOTO_MISSING, f"no {file_name} under {images_dir}")
    path = os.path.join(str(images_dir), file_name)
    # (its line under the path the photo is curated by once there: that run drops it)
    return ImageItem(path=path, problems=[(path, None, fault)], photo=False, missing=True)


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
        raise ValueError(f"--input-format {name!r} is none of {', '.join(SOURCES)}")
    if not source.annotations:
        return source.read(path)
    if images is None:
        raise ValueError(f"--input-format {name} needs --images DIR")
    return source.read(path, os.path.abspath(images))  # each item's path absolute: a dataset read from anywhere


__all__ = [
    "SOURCES",
    "annotation_segments",
    "Source",
    "coco_captions_source",
    "coco_instances_source",
    "folder_source",
    "read_source",
    "visual_genome_source",
]
