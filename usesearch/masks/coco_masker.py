"""``--masker coco``'s file: masks a user brings from any segmenter, as a COCO annotations
file (RLE or polygons; no categories needed), each checked before pycocotools reads it."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from usesearch.errors import CocoFileError, UsesearchError
from usesearch.masks import rle

log = logging.getLogger(__name__)


class CocoMaskFile:
    """Masks from a COCO annotations JSON (RLE or polygons), matched to images by
    file name relative to the JSON's ``images[].file_name`` (``maskers.CocoMasker``
    makes them proposals)."""

    def __init__(self, masks_json: str | os.PathLike):
        from usesearch.io.coco_json import load_coco_json

        self.masks_json = str(Path(masks_json).resolve())
        coco = load_coco_json(masks_json, needs=("images", "annotations"))  # a segmenter's output: no categories
        with open(masks_json, "rb") as f:  # what defines the masks: an index is refused another content
            self.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        by_image: dict[int | str, list] = {}
        for i, ann in enumerate(coco["annotations"]):
            if not isinstance(ann, dict) or not {"image_id", "segmentation"} <= ann.keys():
                raise CocoFileError(f"{masks_json}: annotation #{i} has no image_id or no segmentation")
            if not _is_id(ann["image_id"]):
                raise CocoFileError(f"{masks_json}: annotation #{i}'s image_id is {ann['image_id']!r}"[:300])
            by_image.setdefault(ann["image_id"], []).append(ann)
        self.by_name: dict[str, tuple[dict, list]] = {}
        for i, img in enumerate(coco["images"]):
            if not isinstance(img, dict) or not {"id", "file_name"} <= img.keys() or not _is_id(img["id"]):
                raise CocoFileError(f"{masks_json}: image entry #{i} has no id or no file_name")
            if not isinstance(img["file_name"], str):
                raise CocoFileError(f"{masks_json}: image entry #{i}'s file_name is {img['file_name']!r}"[:300])
            # "./a.png" names a.png; entries naming one file give it all their masks (as a labelled file's do)
            _, anns = self.by_name.setdefault(os.path.normpath(img["file_name"]), (img, []))
            anns += by_image.pop(img["id"], [])
        if not any(anns for _, anns in self.by_name.values()):
            raise CocoFileError(f"{masks_json}: no mask names an image entry of the file: nothing to index")
        if by_image:
            orphans = sum(map(len, by_image.values()))
            log.warning(
                "%s: %d mask(s) name image ids the file has no entry for (e.g. %r): they are not indexed",
                masks_json,
                orphans,
                next(iter(by_image)),
            )
        for img, anns in self.by_name.values():
            _check_forms(masks_json, img, anns)

    def _lookup(self, path: str):
        parts = Path(path).parts
        for i in range(len(parts)):  # longest matching suffix of the path
            hit = self.by_name.get("/".join(parts[i:]))
            if hit:
                return hit
        return None

    def masks(self, hw: tuple[int, int], path: str | None = None) -> np.ndarray:
        """[n, h, w] bool: the photo's masks (none where the file has no entry for it)."""
        h, w = hw
        hit = self._lookup(path or "")
        if hit is None:
            return np.zeros((0, h, w), bool)
        info, anns = hit
        if (info.get("height"), info.get("width")) not in ((h, w), (None, None)):
            raise UsesearchError(f"{path}: masks are {info['height']}x{info['width']} but the image is {h}x{w}")
        masks = []
        for ann in anns:
            try:  # pycocotools reads past a short RLE's end, and takes one of another size as it is
                mask = rle.decode(rle.checked(ann["segmentation"], h, w), h, w)
            except ValueError as exc:  # the photo fails, named: indexing the rest of its masks would lose one
                raise UsesearchError(f"{path}: the mask of annotation {ann.get('id', '?')} is broken: {exc}") from None
            if mask.any():
                masks.append(mask)
        return np.stack(masks) if masks else np.zeros((0, h, w), bool)


def _check_forms(masks_json, img: dict, anns: list) -> None:
    """An entry's masks whose form is broken, refused before any is indexed: the photo
    would fail, and a fixed file is another content, which its index refuses."""
    h, w = img.get("height"), img.get("width")
    if not (isinstance(h, int) and isinstance(w, int)) or isinstance(h, bool) or isinstance(w, bool):
        return  # (sized by the photo: checked as it is read)
    for ann in anns:
        try:
            rle.check_form(ann["segmentation"], h, w)
        except ValueError as exc:
            raise CocoFileError(
                f"{masks_json}: the mask of annotation {ann.get('id', '?')} ({img['file_name']}) is broken: {exc}"
            ) from None


def _is_id(value) -> bool:
    """An image id as COCO files write them: a whole number (some tools: a string)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def masks_file_unrecorded(recorded: dict, asked: dict) -> bool:
    """A ``coco`` index made before its masks file's content was recorded, asked for
    that same file: its content is recorded now (what it was then is not known)."""
    return (
        "masks_sha256" in asked and "masks_sha256" not in recorded and recorded.get("masks_json") == asked["masks_json"]
    )


def masks_file_changed(recorded: dict, asked: dict) -> str:
    """Said where a ``coco`` index is asked for a masks file of other content."""
    if "masks_json" in asked and recorded.get("masks_sha256") not in (None, asked.get("masks_sha256")):
        return " (its masks file's content changed: an index's masks are not replaced in place)"
    return ""
