"""Open-vocabulary semantic segmentation from class-agnostic masks (paper §4.3), and
its evaluation by mIoU.

Each mask is embedded, compared with every class's text embedding (class-name
template ensemble), turned into probabilities by a softmax, and every pixel takes the
class whose probabilities, summed over all masks covering it, are highest. Pixels no
mask covers are left unlabelled. Several models (heads) are an ensemble: their class
probabilities are averaged, as the paper ensembles its curated-data and COCO heads.

Label maps are uint8 (unlabelled 255) up to 255 classes and uint16 (unlabelled
65535) beyond, so ADE-847 and PC-459 fit.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from usesearch.errors import ImageReadError, UsesearchError
from usesearch.io.atomic import save_picture
from usesearch.io.images import displayed_size
from usesearch.tasks.label_maps import label_dtype

if TYPE_CHECKING:
    from usesearch.models.model import SegmentEmbedder

# Same scale the head is trained with (training.loss.LOGIT_SCALE), so probabilities
# at inference are the ones the loss shaped.
LOGIT_SCALE = 30.0


def class_probabilities(
    models: SegmentEmbedder | Sequence[SegmentEmbedder], rgb: np.ndarray, masks: np.ndarray, class_names: Sequence[str]
) -> np.ndarray:
    """[N masks, C classes] softmax probabilities; averaged over an ensemble of models."""
    ensemble = models if isinstance(models, Sequence) else [models]
    total = np.zeros((), np.float32)  # broadcasts: adding the first model's [N, C] gives exactly its values
    for model in ensemble:
        segments = model.embed_segments(rgb, masks)
        texts = model.embed_classes(list(class_names))
        total = total + torch.softmax(torch.from_numpy(LOGIT_SCALE * segments @ texts.T), dim=1).numpy()
    return total / len(ensemble)


BAND_VALUES = 2**23  # floats a band of rows may hold per class or mask: 32 MB


def pixel_labels(masks: np.ndarray, probabilities: np.ndarray, chunk: int = 64) -> np.ndarray:
    """[N,H,W] masks and [N,C] probabilities -> [H,W] class ids (the unlabelled value
    of ``label_dtype`` where no mask covers a pixel). A band of rows at a time, so the
    [C, pixels] scores never exist whole: 300 classes over a 24-megapixel photo would
    be 29 GB of them (``segment`` peaked at 9.1 GB on a 3-megapixel photo)."""
    n, h, w = masks.shape
    c = probabilities.shape[1]
    dtype, unlabelled = label_dtype(c)
    probs = torch.from_numpy(probabilities).float()
    labels = np.empty((h, w), dtype)
    rows = max(1, BAND_VALUES // (w * max(c, min(chunk, n))))
    for top in range(0, h, rows):
        band = masks[:, top : top + rows]
        scores = torch.zeros(c, band.shape[1] * w)
        for start in range(0, n, chunk):
            block = torch.from_numpy(band[start : start + chunk].reshape(-1, band.shape[1] * w)).float()
            scores += probs[start : start + chunk].T @ block
        labels[top : top + rows] = scores.argmax(0).numpy().astype(dtype).reshape(-1, w)
    labels[~masks.any(0)] = unlabelled
    return labels


def segment_image(
    models: SegmentEmbedder | Sequence[SegmentEmbedder], rgb: np.ndarray, masks: np.ndarray, class_names: Sequence[str]
) -> np.ndarray:
    if len(masks) == 0:
        dtype, unlabelled = label_dtype(len(class_names))
        return np.full(rgb.shape[:2], unlabelled, dtype)
    return pixel_labels(masks, class_probabilities(models, rgb, masks, class_names))


def save_label_map(labels: np.ndarray, path: str | os.PathLike) -> None:
    """8- or 16-bit greyscale PNG, the label map's own depth."""
    save_picture(Image.fromarray(labels), path)  # uint16 arrays become 16-bit PNGs ("I;16")


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth label PNG (8 or 16 bit) as int64 class ids."""
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)


def ground_truth_pairs(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(image, label PNG) for every image in the folder, checked before any model runs:
    a folder with no image, or an image without its label PNG, is one line."""
    from usesearch.io.files import IMAGE_SUFFIXES

    if images.resolve() == labels.resolve():  # the label PNGs would be scored as photos, against themselves
        raise UsesearchError(f"--images and --labels are one folder ({images}): give the photos and labels apart")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        below = any(p.is_dir() for p in images.iterdir())  # (its subfolders are not searched: said)
        raise UsesearchError(
            f"{images} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})"
            + ("; its subfolders are not searched: give the folder that holds the photos" if below else "")
        )
    stems = Counter(path.stem for path in files)
    twins = sorted(path.name for path in files if stems[path.stem] > 1)
    if twins:  # both would be scored against the one label PNG of that name
        raise UsesearchError(f"photos {', '.join(twins[:4])} in {images} share a name: one label PNG cannot be both's")
    pairs = [(path, labels / f"{path.stem}.png") for path in files]
    if any(not label.is_file() for _, label in pairs):
        from usesearch.io.atomic import written_by_usesearch

        # A label map or overlay `segment` wrote among the photos is none of them (as `index` leaves it out).
        pairs = [(path, label) for path, label in pairs if label.is_file() or not written_by_usesearch(path)]
        if not pairs:
            raise UsesearchError(f"{images} holds no photo, only pictures usesearch wrote (label maps, overlays)")
    missing = [label.name for _, label in pairs if not label.is_file()]
    if missing:
        raise UsesearchError(
            f"{len(missing)} of {len(pairs)} images have no label PNG in {labels} (first: {missing[0]}); "
            "labels are named like their images"
        )
    return pairs


def check_ground_truth(
    pairs: list[tuple[Path, Path]], num_classes: int, ignore_index: int, reduce_zero_label: bool
) -> None:
    """Every label map read and checked against its photo's size before any model runs
    (``read_ground_truth``'s refusals), and at least one pixel labelled: a bad last map
    must not end a run that scored every other image."""
    if 0 <= ignore_index < num_classes:  # that class's pixels would be skipped as unlabelled, without a word
        raise UsesearchError(
            f"--ignore-index {ignore_index} is the id of a class among the {num_classes} given: its pixels would "
            "never be scored; give the value your labels use for unlabelled (ADE-847 conversions: 65535)"
        )
    labelled = False
    for image, label in pairs:
        try:
            height, width = displayed_size(image)  # EXIF-rotated a quarter turn, as it is read
        except (OSError, ImageReadError) as exc:
            raise UsesearchError(f"{image}: not a readable image ({exc})") from None
        gt = read_ground_truth(label, (height, width), num_classes, ignore_index, reduce_zero_label)
        labelled = labelled or bool((gt != ignore_index).any())
    if not labelled:
        raise UsesearchError(
            f"no pixel of {pairs[0][1].parent} is labelled: every one is the ignored value {ignore_index}"
        )


def read_ground_truth(
    label: Path, image_hw: tuple[int, int], num_classes: int, ignore_index: int, reduce_zero_label: bool
) -> np.ndarray:
    """A label map as class ids, refused in one line when it does not fit its image or
    holds a value that is neither a class nor ``ignore_index`` (a class list too short,
    or ADE20K's layout read without ``--reduce-zero-label``)."""
    try:
        gt = read_label_map(label)
    except (OSError, ValueError) as exc:
        raise UsesearchError(f"{label}: not a readable label PNG ({exc})") from None
    if gt.ndim != 2:
        raise UsesearchError(f"{label}: a label map has one channel of class ids, this one has {gt.shape[2]}")
    if gt.shape != image_hw:
        raise UsesearchError(
            f"{label} is {gt.shape[1]}x{gt.shape[0]} but its image is {image_hw[1]}x{image_hw[0]} (width x height)"
        )
    if reduce_zero_label:  # ADE20K: 0 is "other", ignored; the ignored value stays ignored
        gt = np.where((gt == 0) | (gt == ignore_index), ignore_index, gt - 1)
    stray = np.unique(gt[(gt != ignore_index) & ((gt < 0) | (gt >= num_classes))])
    if len(stray):
        raise UsesearchError(
            f"{label} holds class id {int(stray[0])}, past the {num_classes} classes given "
            f"(ignored value {ignore_index}); check the class list"
            + ("" if reduce_zero_label else ", or --reduce-zero-label for ADE20K's layout")
        )
    return gt


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """[C, C] counts, rows ground truth, columns prediction; unlabelled predictions
    count as misses of the ground-truth class (they are nobody's true positive)."""
    valid = gt != ignore_index
    gt, pred = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    pred = np.where(pred < num_classes, pred, num_classes)  # unlabelled -> an extra column
    matrix = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return matrix.reshape(num_classes, num_classes + 1)


def miou(matrix: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU over the classes that occur in the ground truth; per-class IoU (nan for
    a class the ground truth lacks). detectron2's ``SemSegEvaluator`` rule, which the
    methods the paper compares with (§4.2, Table 2) report: a class predicted but never
    labelled does not count as an IoU of 0 (mmseg's rule, lower where, as in ADE-847's
    validation set, most classes never occur)."""
    num_classes = matrix.shape[0]
    tp = np.diag(matrix[:, :num_classes]).astype(np.float64)
    gt_total = matrix.sum(1)
    pred_total = matrix[:, :num_classes].sum(0)
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(gt_total > 0, tp / union, np.nan)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"), iou
