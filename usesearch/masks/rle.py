"""COCO masks, through pycocotools: the one place masks become RLE and back.

The convention everywhere else: compressed RLE as ``{"size": [h, w], "counts": str}``
(JSON-friendly ``str`` counts); pycocotools wants ``bytes`` counts, and this module
converts at its edge. Polygons and uncompressed RLE come in through
``segmentation_to_rle``.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class RleStack:
    """The masks of one image kept as RLEs (str counts): a consumer that can work on
    runs (the pooling weights) never decodes them; others call ``decode``."""

    rles: list[dict]
    hw: tuple[int, int]

    def __post_init__(self):
        wrong = [r["size"] for r in self.rles if tuple(r["size"]) != tuple(self.hw)]
        if wrong:
            raise ValueError(f"masks must be {self.hw[0]}x{self.hw[1]} like the image, got an RLE of size {wrong[0]}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.rles), *self.hw)

    def __len__(self) -> int:
        return len(self.rles)

    def decode(self) -> np.ndarray:
        return decode_stack(self.rles, self.hw)


def segmentation_to_rle(segmentation: Any, height: int | None, width: int | None) -> dict:
    """A COCO ``segmentation`` (polygons, uncompressed RLE or compressed RLE with str or
    bytes counts) -> compressed RLE with bytes counts, as pycocotools wants it. Polygons
    need the image's height and width; an RLE carries its own size."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return _pycoco(segmentation)


def _pycoco(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def to_str(rle: dict) -> dict:
    """A compressed RLE with bytes (pycocotools') or str counts -> ours (str counts)."""
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts if isinstance(counts, str) else counts.decode("ascii"),
    }


def encode(mask: np.ndarray) -> dict:
    """One bool (or 0/1) mask [H, W] -> compressed RLE with str counts."""
    return to_str(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def encode_stack(masks) -> list[dict]:
    """Masks [N, H, W] (numpy or a torch tensor on any device) -> RLEs. On a CPU, one
    pycocotools call (it wants column-major H x W x N uint8); a tensor on a GPU is
    run-length coded there (``encode_runs``), so only its run boundaries cross to
    the host, not its pixels."""
    if not len(masks):
        return []
    if not isinstance(masks, np.ndarray):
        if masks.device.type != "cpu":
            return encode_runs(masks)
        masks = masks.numpy()
    return [to_str(rle) for rle in mask_utils.encode(_column_major(masks))]


def _column_major(masks: np.ndarray) -> np.ndarray:
    """Masks [N, H, W] -> uint8 [H, W, N] in column-major order, pycocotools' layout.
    Each mask is transposed by OpenCV's tiled transpose: torch's and NumPy's strided
    copies took 0.82 and 1.79 s for 25 masks of 12 MP, cv2.transpose 0.18 s."""
    import cv2

    masks = np.ascontiguousarray(masks)  # OpenCV takes rows of adjacent pixels
    pixels = masks.view(np.uint8) if masks.dtype == np.bool_ else (masks != 0).view(np.uint8)
    n, h, w = pixels.shape
    out = np.empty((n, w, h), np.uint8)  # C-ordered [N, W, H] is the Fortran order of [H, W, N]
    for mask, column_major in zip(pixels, out) if h and w else ():  # (OpenCV refuses an empty image)
        cv2.transpose(mask, dst=column_major)
    return out.transpose(2, 1, 0)


def encode_runs(masks) -> list[dict]:
    """Bool masks [N, H, W] as a torch tensor on any device -> RLEs (str counts),
    the same as ``encode_stack`` gives. The run boundaries (where a mask's
    column-major pixels change value) are found on the tensor's device and read
    back in one transfer; pycocotools then packs each mask's run lengths."""
    import torch

    n, h, w = masks.shape
    flat = masks.transpose(1, 2).reshape(n, h * w)  # COCO's column-major order, one row per mask
    change_mask, change_at = torch.nonzero(flat[:, 1:] != flat[:, :-1], as_tuple=True)  # sorted by mask, then pixel
    found = torch.cat([flat[:, 0].long(), change_mask, change_at + 1]).cpu().numpy()  # the one transfer
    changes = len(change_at)
    starts_on, mask_of, bounds = found[:n].astype(bool), found[n : n + changes], found[n + changes :]
    split = np.searchsorted(mask_of, np.arange(n + 1))
    uncompressed, found_runs = [], []
    for i in range(n):
        edges = np.concatenate(([0], bounds[split[i] : split[i + 1]], [h * w]))
        counts = np.diff(edges)
        if starts_on[i]:  # COCO counts start with a background run, empty here
            counts = np.concatenate(([0], counts))
        uncompressed.append({"size": [h, w], "counts": counts.tolist()})
        first = 0 if starts_on[i] else 1  # edges alternate from the first foreground run's start
        starts, ends = edges[first:-1:2].astype(np.int64), edges[first + 1 :: 2].astype(np.int64)
        starts.flags.writeable = ends.flags.writeable = False  # shared by every later reader
        found_runs.append((starts, ends))
    rles = [to_str(r) for r in mask_utils.frPyObjects(uncompressed, h, w)]
    for r, (starts, ends) in zip(rles, found_runs):
        _remember_runs(r, starts, ends)
    return rles


# Runs ``encode_runs`` found, by RLE, for ``runs`` to return instead of parsing the
# counts again: a GPU run's masks are pooled right after they are encoded (the parse
# was ~10 ms of a photo's 100 masks on the host). Bounded by runs held, oldest out.
RUNS_REMEMBERED = 1 << 22  # runs (64 MB of int64 starts and ends)
ENTRY_RUNS = 32  # an entry's own objects (key, tuple, array headers: ~500 B), counted as runs
_runs_memo: OrderedDict[tuple[int, int, str], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_runs_held = [0]
_runs_lock = threading.Lock()


def _remember_runs(rle: dict, starts: np.ndarray, ends: np.ndarray) -> None:
    key = (*rle["size"], rle["counts"])
    with _runs_lock:
        if key in _runs_memo:
            return
        _runs_memo[key] = (starts, ends)
        _runs_held[0] += len(starts) + ENTRY_RUNS
        while _runs_held[0] > RUNS_REMEMBERED and len(_runs_memo) > 1:
            _, (old, _) = _runs_memo.popitem(last=False)
            _runs_held[0] -= len(old) + ENTRY_RUNS


def decode(segmentation: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
    """An RLE (str or bytes counts), or any COCO segmentation given the image size ->
    bool [H, W]."""
    if isinstance(segmentation, dict) and not isinstance(segmentation["counts"], list):
        rle = _pycoco(segmentation)
    else:
        rle = segmentation_to_rle(segmentation, height, width)
    return mask_utils.decode(rle).astype(bool)


def decode_stack(rles: list[dict], hw: tuple[int, int] | None = None) -> np.ndarray:
    """RLEs of one image -> bool [N, H, W], C-contiguous, in one pycocotools call."""
    if not rles:
        return np.zeros((0, *(hw or (0, 0))), bool)
    return mask_utils.decode([_pycoco(r) for r in rles]).transpose(2, 0, 1).astype(bool, order="C")


def runs(rle: dict) -> tuple[np.ndarray, np.ndarray]:
    """Foreground runs of a compressed RLE without decoding it to pixels: int64
    ``starts``, ``ends`` (exclusive) as column-major (COCO) flat pixel indices;
    those ``encode_runs`` found when it made this RLE, where it did (not to be written to)."""
    if isinstance(rle.get("counts"), str):
        with _runs_lock:
            found = _runs_memo.get((*rle["size"], rle["counts"]))
        if found is not None:
            return found
    bounds = np.cumsum(run_lengths(rle))  # runs alternate background, foreground from pixel 0
    return bounds[0::2][: len(bounds) // 2], bounds[1::2]


def run_lengths(rle: dict) -> np.ndarray:
    """The int64 run lengths of a compressed RLE (background first, alternating).

    pycocotools has no public reader of the counts, so this vectorises its
    ``rleFrString`` in NumPy: 6-bit characters from 48, 5 data bits and a
    continuation bit each, least significant group first, sign-extended; counts
    after the third are stored as a difference to the count two before."""
    chars = np.frombuffer(_pycoco(rle)["counts"], np.uint8).astype(np.int64) - 48
    if not len(chars):
        return np.zeros(0, np.int64)
    last = (chars & 0x20) == 0  # the final character of each count
    group = np.concatenate(([0], np.cumsum(last)[:-1]))
    first = np.flatnonzero(np.concatenate(([True], last[:-1])))
    position = np.arange(len(chars)) - first[group]
    values = np.bincount(group, weights=(chars & 0x1F) << (5 * position)).astype(np.int64)
    ends = np.flatnonzero(last)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= 1 << (5 * (position[ends[negative]] + 1))
    counts = values.copy()
    counts[2::2] = np.cumsum(values[2::2])  # count[m] += count[m - 2] for m > 2
    counts[1::2] = np.cumsum(values[1::2])
    return counts


_COUNTS = re.compile(r"[0-o]*")  # pycocotools' alphabet: 5 bits of a run a character, plus 48


def counts_written(counts: str) -> bool:
    """Compressed counts as pycocotools writes them: its alphabet, the last run ended
    (no continuation bit). A regex: curation checks every mask of every record read."""
    return _COUNTS.fullmatch(counts) is not None and not (counts and (ord(counts[-1]) - 48) & 0x20)


def is_compressed(rle: Any) -> bool:
    """A compressed RLE in this module's convention (size [h, w] of positive whole
    numbers, str counts as written), checked without decoding it."""
    if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str):
        return False
    size = rle.get("size")
    whole = isinstance(size, list) and len(size) == 2 and all(type(n) is int and n > 0 for n in size)
    return whole and counts_written(rle["counts"])


def checked(segmentation: Any, height: int, width: int) -> dict:
    """A COCO ``segmentation`` from a file not trusted (polygons, uncompressed or
    compressed RLE) -> compressed RLE (str counts) of an ``height`` x ``width`` photo;
    what pycocotools would misread is refused with a one-line ``ValueError`` first: it
    reads past the end of an RLE whose runs fall short of the photo, hangs on a NaN
    coordinate and crashes on huge ones."""
    check_form(segmentation, height, width)
    if isinstance(segmentation, dict):
        size, counts = segmentation["size"], segmentation["counts"]
        if isinstance(counts, list):
            lengths = np.asarray(counts, np.int64)
        else:
            if not counts_written(counts.decode("latin-1") if isinstance(counts, bytes) else counts):
                raise ValueError("the RLE's counts are not a COCO compressed string")
            lengths = run_lengths({"size": size, "counts": counts})
        if len(lengths) and lengths.min() < 0 or int(lengths.sum()) != height * width:
            raise ValueError(f"the RLE's runs do not cover the photo's {height}x{width} = {height * width} pixels")
    return to_str(segmentation_to_rle(segmentation, height, width))


def check_form(segmentation: Any, height: int, width: int) -> None:
    """``checked``'s checks that decode nothing (a polygon's coordinates, an RLE's size,
    an uncompressed RLE's runs): cheap enough for every mask of a file at once."""
    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) for p in segmentation):
            raise ValueError("polygons must be a non-empty list of coordinate lists")
        limit = 2 * max(height, width) + 16  # a few pixels outside the photo are common; far outside, a fault
        for polygon in segmentation:
            if len(polygon) < 6 or len(polygon) % 2:
                raise ValueError(f"a polygon needs an even number of coordinates, at least 6; got {len(polygon)}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon):
                raise ValueError("polygon coordinates must be numbers")
            try:
                values = np.asarray(polygon, np.float64)
            except OverflowError:  # an integer past any float
                values = np.array([np.inf])
            if not np.isfinite(values).all() or np.abs(values).max() > limit:
                raise ValueError(f"polygon coordinates must be finite and near the {width}x{height} photo")
        return
    if not isinstance(segmentation, dict) or not {"size", "counts"} <= segmentation.keys():
        raise ValueError("a segmentation must be polygons or an RLE with size and counts")
    size, counts = segmentation["size"], segmentation["counts"]
    if not isinstance(size, list) or size != [height, width]:
        raise ValueError(f"the RLE's size is {size!r} but the photo is {height}x{width} (h x w)")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= height * width for c in counts):
            raise ValueError("an uncompressed RLE's counts must be whole numbers of pixels")
        if sum(counts) != height * width:
            raise ValueError(f"the RLE's runs do not cover the photo's {height}x{width} = {height * width} pixels")
    elif not isinstance(counts, (str, bytes)):
        raise ValueError("an RLE's counts must be a list of numbers or a compressed string")


def iou_matrix(rles: list[dict]) -> np.ndarray:
    """[N, N] mask IoU between the RLEs (of one image)."""
    return iou_between(rles, rles)


def overlap_of_smaller(a: list[dict], b: list[dict]) -> np.ndarray:
    """[len(a), len(b)]: |a ∩ b| / min(|a|, |b|), 1.0 where one mask lies wholly in the
    other. pycocotools' IoU with ``iscrowd`` set divides the intersection by the first
    mask's area, so the two directions give both containments."""
    return np.maximum(covered_by(a, b), covered_by(b, a).T)


def iou_between(a: list[dict], b: list[dict]) -> np.ndarray:
    """[len(a), len(b)] mask IoU of every mask of ``a`` with every mask of ``b`` (one image)."""
    return _pairwise(a, b, crowd=0)


def covered_by(a: list[dict], b: list[dict]) -> np.ndarray:
    """[len(a), len(b)]: |a ∩ b| / |a|, the share of each ``a`` mask inside each ``b``
    mask (pycocotools' IoU with ``iscrowd`` set)."""
    return _pairwise(a, b, crowd=1)


def _pairwise(a: list[dict], b: list[dict], crowd: int) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    pa, pb = [_pycoco(r) for r in a], [_pycoco(r) for r in b]
    return np.asarray(mask_utils.iou(pa, pb, [crowd] * len(pb))).reshape(len(pa), len(pb))


def area(rle: dict) -> int:
    return int(mask_utils.area(_pycoco(rle)))


def bbox(rle: dict) -> list[int]:
    """[x, y, w, h] (COCO: w = x1 - x0 + 1)."""
    return [int(v) for v in mask_utils.toBbox(_pycoco(rle))]
