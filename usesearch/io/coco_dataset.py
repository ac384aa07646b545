"""A labelled dataset as COCO annotations, read for indexing by its own masks
(``usesearch index IMAGES --coco FILE.json``) and for curation (``curate run
--input-format coco-instances``): the file is refused in one line when
it is not COCO at all, before anything runs; within it, each fault (an annotation
of no image entry or of an unknown category, a duplicate id, a broken RLE or
polygon, an empty mask) is an ``AnnotationError`` to record, and the rest is indexed.

Masks are checked against the photo's real size (``rle.checked``) when the photo is
read; everything else here is checked from the JSON alone."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from usesearch.errors import AnnotationError, CocoFileError, UsesearchError, first_few, first_line
from usesearch.io.coco_json import load_coco_json, not_coco
from usesearch.io.coco_photos import photo_path
from usesearch.io.files import holds_anything

# The kinds of fault recorded (``AnnotationProblem.kind``).
PHOTO_MISSING = "photo missing"
UNKNOWN_IMAGE = "unknown image"
UNKNOWN_CATEGORY = "unknown category"
DUPLICATE_ID = "duplicate id"
DUPLICATE_PHOTO = "duplicate photo"  # two image entries naming one file (not an id repeated)
CATEGORY_NAME = "category name"  # two categories of one name, or of names alike but for case or spaces
BROKEN_ANNOTATION = "broken annotation"
BROKEN_MASK = "broken mask"
EMPTY_MASK = "empty mask"
SIZE_MISMATCH = "size mismatch"
AMBIGUOUS_PHOTO = "ambiguous photo"


@dataclass(frozen=True, slots=True)
class Annotation:
    """One annotation as it will be stored, its mask still the file's ``segmentation``
    (well-formed polygons held as float64 arrays: a quarter of the lists' memory;
    ``mask_source`` gives them back as the file had them)."""

    id: int
    category: str
    iscrowd: bool
    segmentation: Any

    def mask_source(self) -> Any:
        """The ``segmentation`` as the file spelled it (polygons as lists of numbers)."""
        if isinstance(self.segmentation, tuple):
            return [polygon.tolist() for polygon in self.segmentation]
        return self.segmentation


@dataclass
class ImageEntry:
    """A COCO ``images`` entry and its annotations that passed the JSON's checks."""

    id: int
    file_name: str
    height: int | None
    width: int | None
    annotations: list[Annotation] = field(default_factory=list)


@dataclass
class CocoDataset:
    """A COCO file's image entries (in file order) with their annotations, and the
    faults found in the JSON, each an ``AnnotationError`` with the entry's file name
    (or None) and the annotation id (or None)."""

    path: Path
    images: list[ImageEntry]
    problems: list[tuple[str | None, int | None, AnnotationError]]
    categories: dict[int, str] = field(default_factory=dict)  # every category, by id (with none annotated too)

    def first_fault(self) -> str:
        """How many faults the file has and the first, in one line ("" when none)."""
        if not self.problems:
            return ""
        return f"{len(self.problems)} fault(s) in it, the first: {fault_line(self.path, *self.problems[0])}"


def fault_line(path: Path, name: str | None, ann: int | None, error: AnnotationError) -> str:
    """One fault of the COCO file at ``path``: its photo's file name (else the file's),
    the annotation id where it has one, and what is wrong."""
    return f"{name or path.name}{f' annotation {ann}' if ann is not None else ''}: {error}"


def as_dataset(coco: str | os.PathLike | CocoDataset) -> CocoDataset:
    """``coco`` itself where it was read already (the command line reads it before the
    model libraries load, to refuse a wrong file at once), else the file read."""
    return coco if isinstance(coco, CocoDataset) else read_coco(coco)


def read_coco(path: str | os.PathLike) -> CocoDataset:
    """Read and check a COCO annotations file. A file that is not COCO (unreadable,
    not JSON, no ``images``/``annotations``/``categories`` lists) raises
    ``CocoFileError``; faults of single entries are collected, not raised.

    The file is streamed (ijson's C parser), not loaded whole: the image entries and
    categories are read first (COCO lists its categories after the annotations), then
    the annotations one by one, each kept with its polygons as arrays. At 10^6
    annotations that takes 0.75 GB where ``json.loads`` took 3.1 GB
    (``benchmarks/coco_read.py``). A file that is not strict JSON (Python's ``json``
    writes a NaN coordinate as ``NaN``, which ijson refuses) is read whole, as
    ``json`` reads it, so that one bad polygon stays one annotation's fault."""
    import ijson

    path = Path(path)
    try:
        try:
            with open(path, "rb") as f:
                images, categories = _top_level_list(f, "images"), _top_level_list(f, "categories")
                return _dataset(path, images, categories, _streamed_annotations(path, f))
        except ijson.JSONError:
            coco = load_coco_json(path)
            return _dataset(path, coco["images"], coco["categories"], coco["annotations"])
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise CocoFileError(f"{path} is not a COCO annotations file: {first_line(exc)}") from None


def _dataset(path: Path, images_items: Any, category_items: Any, annotation_items: Any) -> CocoDataset:
    """The checked dataset, from the file's three lists (None where one is missing)."""
    if not all(isinstance(items, (list, Iterator)) for items in (images_items, category_items, annotation_items)):
        raise not_coco(path)
    problems: list[tuple[str | None, int | None, AnnotationError]] = []
    categories = _categories(category_items, problems)
    images: dict[int, ImageEntry] = {}
    for item in images_items:
        entry = _image_entry(item, problems)
        if entry is None:
            continue
        if entry.id in images:
            problems.append((entry.file_name, None, AnnotationError(DUPLICATE_ID, f"image id {entry.id} repeated")))
            continue
        images[entry.id] = entry
    seen: set[int] = set()
    for at, item in enumerate(annotation_items):
        _add_annotation(item, at, categories, seen, images, problems)
    return CocoDataset(path.resolve(), one_entry_a_photo(images.values(), problems), problems, categories)


def _streamed_annotations(path: Path, f) -> Iterator[Any]:
    """The file's annotations one at a time; at the end, a file with none is checked
    for having the list at all."""
    import ijson

    f.seek(0)
    count = 0
    for count, item in enumerate(ijson.items(f, "annotations.item", use_float=True), 1):
        yield item
    if not count and _top_level_list(f, "annotations") is None:
        raise not_coco(path)


def _top_level_list(f, key: str) -> list | None:
    """The file's top-level ``key`` when it is a list, else None (read from the start,
    up to the end of that list)."""
    import ijson

    f.seek(0)
    found = next(ijson.items(f, key, use_float=True), None)
    return found if isinstance(found, list) else None


def _add_annotation(
    item: Any, at: int, categories: dict[int, str], seen: set[int], images: dict, problems: list
) -> None:
    try:
        image_id, annotation = _annotation(item, at, categories, seen)
    except AnnotationError as exc:
        ann_id = item.get("id") if isinstance(item, dict) and _is_int(item.get("id")) else None
        entry = images.get(item.get("image_id")) if isinstance(item, dict) and _is_int(item.get("image_id")) else None
        problems.append((entry.file_name if entry is not None else None, ann_id, exc))  # its photo, where known
        return
    entry = images.get(image_id)
    if entry is None:
        problems.append(
            (None, annotation.id, AnnotationError(UNKNOWN_IMAGE, f"annotation of image id {image_id}, not listed"))
        )
        return
    entry.annotations.append(annotation)


class _Entry(Protocol):
    """An image entry as ``one_entry_a_photo`` merges it: ``ImageEntry``, or a captions
    file's entry (``curation.sources``), whose annotations are its captions."""

    id: Any
    file_name: str
    height: int | None
    width: int | None
    annotations: list[Any]


_E = TypeVar("_E", bound=_Entry)


def one_entry_a_photo(entries: Iterable[_E], problems: list, captions: bool = False) -> list[_E]:
    """Entries naming the same file become one (a photo's annotations are all its
    entries'), each repeat a problem: otherwise each would undo the other's on a re-run.
    A repeat giving the photo another size adds no annotation (a "size mismatch"): its
    masks would not sit on the photo's pixels. ``captions``: a captions file's entries,
    whose texts hold at any size. One place for instances and captions files."""
    by_file: dict[str, _E] = {}
    what, merged = ("captions", "curated") if captions else ("annotations", "indexed")
    for entry in entries:
        first = by_file.setdefault(os.path.normpath(entry.file_name), entry)
        if first is entry:
            continue
        sizes = {(e.height, e.width) for e in (first, entry)}
        if not captions and None not in (first.height, entry.height) and len(sizes) > 1:
            # Drawn on another size of the photo: its masks would not sit on its pixels.
            message = (
                f"image entries {first.id} and {entry.id} name the same file at {first.width}x{first.height} "
                f"and {entry.width}x{entry.height}: the annotations of {entry.id} are left out"
            )
            problems.append((entry.file_name, None, AnnotationError(SIZE_MISMATCH, message)))
            continue
        if first.height is None:  # the repeat's size is the one the file gives
            first.height, first.width = entry.height, entry.width
        first.annotations += entry.annotations
        message = f"image entries {first.id} and {entry.id} name the same file: their {what} are {merged} together"
        problems.append((entry.file_name, None, AnnotationError(DUPLICATE_PHOTO, message)))
    return list(by_file.values())


def _is_int(value: Any) -> bool:
    """A whole number a catalog's BIGINT holds (JSON's 2**63 does not, nor 1.0 or "1")."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _categories(items: list, problems: list) -> dict[int, str]:
    names: dict[int, str] = {}
    for item in items:
        if not isinstance(item, dict) or not _is_int(item.get("id")) or not isinstance(item.get("name"), str):
            problems.append(
                (None, None, AnnotationError(BROKEN_ANNOTATION, f"a category without id and name: {item!r}"[:200]))
            )
        elif not item["name"].strip():  # (its text would embed as nothing: refused in the model's words)
            problems.append((None, None, AnnotationError(BROKEN_ANNOTATION, f"category {item['id']} has no name")))
        elif item["id"] in names:
            problems.append((None, None, AnnotationError(DUPLICATE_ID, f"category id {item['id']} repeated")))
        else:
            names[item["id"]] = item["name"]
    _say_names_alike(names, problems)
    return names


def _say_names_alike(names: dict[int, str], problems: list) -> None:
    """Categories an auditor would want told of, indexed as they are: two of one name
    (their annotations are one class) and names alike but for case or spaces ("cup",
    "Cup "), which are two classes."""
    by_name: dict[str, list[int]] = {}
    by_form: dict[str, list[int]] = {}
    for category, name in names.items():
        by_name.setdefault(name, []).append(category)
        by_form.setdefault(" ".join(name.split()).casefold(), []).append(category)
    for name, ids in by_name.items():
        if len(ids) > 1:
            message = f"categories {first_few(ids)} share the name {name!r}: their annotations are one class here"
            problems.append((None, None, AnnotationError(CATEGORY_NAME, message)))
    for ids in by_form.values():
        spelt = list(dict.fromkeys(names[i] for i in ids))
        if len(spelt) > 1:
            message = (
                f"categories named {first_few(map(repr, spelt))} differ only in case or spaces: they are "
                f"{len(spelt)} classes (one name in the file makes them one)"
            )
            problems.append((None, None, AnnotationError(CATEGORY_NAME, message)))


def _image_entry(item: Any, problems: list) -> ImageEntry | None:
    if not isinstance(item, dict) or not _is_int(item.get("id")) or not isinstance(item.get("file_name"), str):
        # Said as what it is: an id "6" (a string) was "an image entry without id and file_name".
        if not isinstance(item, dict) or "id" not in item or "file_name" not in item:
            why = "an image entry without id and file_name"
        elif not _is_int(item["id"]):
            why = f"an image entry whose id is not a whole number ({item['id']!r})"
        else:
            why = f"an image entry whose file_name is not text ({item['file_name']!r})"
        problems.append((None, None, AnnotationError(BROKEN_ANNOTATION, f"{why}: {item!r}"[:200])))
        return None
    height: Any = item.get("height")
    width: Any = item.get("width")
    if _is_int(height) and _is_int(width) and height > 0 and width > 0:
        return ImageEntry(item["id"], item["file_name"], height, width)
    return ImageEntry(item["id"], item["file_name"], None, None)  # sized by the photo when it is read


def _annotation(item: Any, at: int, categories: dict[int, str], seen: set[int]) -> tuple[int, Annotation]:
    """``at``: its place in the file's annotations list, to find one whose id is broken."""
    if not isinstance(item, dict):
        raise AnnotationError(BROKEN_ANNOTATION, f"annotations[{at}] is not an object: {item!r}"[:200])
    keys = ("id", "image_id", "category_id")
    wrong = [f"{k} {item[k]!r}" if k in item else f"no {k}" for k in keys if not _is_int(item.get(k))]
    if wrong:
        said = ", ".join(wrong)[:200]
        raise AnnotationError(
            BROKEN_ANNOTATION, f"annotations[{at}]: id, image_id and category_id must be whole numbers ({said})"
        )
    crowd = 0 if item.get("iscrowd") is None else item["iscrowd"]  # null: not said, as when missing
    if crowd not in (0, 1):  # (True, 1.0 are 1); "0" was read as a crowd
        raise AnnotationError(BROKEN_ANNOTATION, f"iscrowd must be 0 or 1, not {crowd!r}")
    if "segmentation" not in item:
        boxed = " (a box alone, as in a detection dataset: a segment is a mask, an RLE or a polygon)"
        raise AnnotationError(BROKEN_MASK, "the annotation has no segmentation" + boxed * ("bbox" in item))
    if item["id"] in seen:
        raise AnnotationError(DUPLICATE_ID, f"annotation id {item['id']} repeated (the first is kept)")
    seen.add(item["id"])
    category = categories.get(item["category_id"])
    if category is None:
        raise AnnotationError(UNKNOWN_CATEGORY, f"category id {item['category_id']} is not among the categories")
    annotation = Annotation(item["id"], category, bool(crowd), _compact(item["segmentation"]))
    return item["image_id"], annotation


def _compact(segmentation: Any) -> Any:
    """Polygons of numbers as a tuple of float64 arrays (exact: JSON numbers are
    doubles); anything else as it is, for ``rle.checked`` to judge."""
    if (
        isinstance(segmentation, list)
        and segmentation
        and all(
            isinstance(p, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            for p in segmentation
        )
    ):
        try:
            return tuple(np.asarray(p, np.float64) for p in segmentation)
        except OverflowError:  # a number past any float (10**400): ``rle.checked`` refuses it in one line
            return segmentation
    return segmentation


# A fault as recorded: the entry's file name (or None), the annotation id (or None), what is wrong.
Problem = tuple[str | None, int | None, AnnotationError]


def refuse_when_no_photo(
    dataset: CocoDataset, folders: list[str], new_index: bool = False, outcome: str = "nothing is indexed"
) -> None:
    """Refused in one line before anything is made (an index folder bound to the run's
    model among them): a file none of whose annotated photos lies under ``folders`` (a
    wrong folder, a disk not mounted) indexed nothing, recorded each as missing and
    exited 0, as a plain ``index`` of an empty folder is refused. Stops at the first
    photo found: one stat in the usual case; folders all empty or missing (a disk not
    mounted) are refused without a stat an entry (10^6 on a network share). A file with
    no annotation at all is refused for a ``new_index`` (it would be empty); an index's
    split it held goes, as the file says. ``outcome``: what the refused run would have done."""
    annotated = [entry for entry in dataset.images if entry.annotations]
    if new_index and not annotated:
        raise UsesearchError(f"{dataset.path.name} has no annotation of any photo: a new index of it would be empty")
    found = any(holds_anything(folder) for folder in folders) and any(
        photo_path(folders, entry.file_name) is not None for entry in annotated
    )
    if annotated and not found:
        where = ", ".join(folders)
        raise UsesearchError(
            f"none of the {len(annotated)} annotated photo(s) {dataset.path.name} names is under {where}: "
            f"{outcome} (give the folder its file_names are relative to)"
        )
