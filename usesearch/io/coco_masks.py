"""A labelled photo's annotations checked against the photo as read: its entry's size
against the photo's, and each annotation's mask at that size (``rle.checked``), the
faults said as ``AnnotationError``s to record (``io.coco_dataset`` checks the JSON alone)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from usesearch.errors import AnnotationError
from usesearch.masks import rle

from .coco_dataset import BROKEN_MASK, EMPTY_MASK, SIZE_MISMATCH, Annotation, ImageEntry, Problem


def size_fault(entry: ImageEntry, hw: tuple[int, int]) -> Problem | None:
    """The entry's size is not the photo's (a photo replaced, or rotated by its EXIF
    orientation): none of its masks can be trusted to sit on the photo's pixels."""
    height, width = hw
    if entry.height is None or (entry.height, entry.width) == (height, width):
        return None
    message = f"the entry says {entry.width}x{entry.height} but the photo is {width}x{height}"
    if (entry.height, entry.width) == (width, height):  # PIL's .size and file browsers say the entry's
        message += " (turned: where its EXIF orientation turns it, the entry gives its size before turning)"
    return entry.file_name, None, AnnotationError(SIZE_MISMATCH, message)


def masks_of(entry: ImageEntry, height: int, width: int) -> Iterator[tuple[Annotation, dict | AnnotationError]]:
    """Each annotation of a photo read at ``height`` x ``width``, with its compressed
    RLE (str counts) or the fault that keeps it out."""
    for annotation in entry.annotations:
        try:
            mask = rle.checked(annotation.mask_source(), height, width)
        except ValueError as exc:
            yield annotation, AnnotationError(BROKEN_MASK, str(exc))
            continue
        if rle.area(mask) == 0:
            yield (
                annotation,
                AnnotationError(EMPTY_MASK, "the mask covers no pixel" + _outside(annotation, height, width)),
            )
            continue
        yield annotation, mask


def _outside(annotation: Annotation, height: int, width: int) -> str:
    """Why a polygon's mask covers no pixel where it lies wholly off its photo (an entry
    of another photo, or coordinates of another scale): said, not only "empty"."""
    if not isinstance(annotation.segmentation, tuple) or not annotation.segmentation:
        return ""
    xs = np.concatenate([polygon[0::2] for polygon in annotation.segmentation])
    ys = np.concatenate([polygon[1::2] for polygon in annotation.segmentation])
    if xs.min() < width and ys.min() < height and xs.max() > 0 and ys.max() > 0:
        return ""
    box = f"x {xs.min():g}-{xs.max():g}, y {ys.min():g}-{ys.max():g}"
    return f": its polygon ({box}) lies outside the {width}x{height} photo"


def checked_masks(entry: ImageEntry, hw: tuple[int, int]) -> tuple[list[tuple[Annotation, dict]], list[Problem]]:
    """The entry's annotations with their masks at the photo's size ``hw``, and the
    faults: an entry whose size is not the photo's gives no mask (none would sit on its
    pixels), a broken or empty mask is a fault of its own."""
    fault = size_fault(entry, hw)
    if fault is not None:
        return [], [fault]
    kept: list[tuple[Annotation, dict]] = []
    problems: list[Problem] = []
    for annotation, mask in masks_of(entry, *hw):
        if isinstance(mask, AnnotationError):
            problems.append((entry.file_name, annotation.id, mask))
        else:
            kept.append((annotation, mask))
    return kept, problems
