"""Open-vocabulary semantic segmentation from class-agnostic masks (paper §4.3), and
its evaluation by mIoU.

Each mask is embedded, compared with every class's text embedding (class-name
template ensemble), turned into probabilities by a softmax, and every pixel takes the
class whose probabilities, summed over all masks covering it, are highest. Pixels no
mask covers are left unlabelled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Same scale the head is trained with (training.loss.LOGIT_SCALE), so probabilities
# at inference are the ones the loss shaped.
LOGIT_SCALE = 30.0
UNLABELLED = 255


def class_probabilities(model, rgb: np.ndarray, masks: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """[N masks, C classes] softmax probabilities."""
    segments = model.embed_segments(rgb, masks)
    texts = model.embed_classes(list(class_names))
    return torch.softmax(torch.from_numpy(LOGIT_SCALE * segments @ texts.T), dim=1).numpy()


def pixel_labels(masks: np.ndarray, probabilities: np.ndarray, chunk: int = 64) -> np.ndarray:
    """[N,H,W] masks and [N,C] probabilities -> [H,W] class ids (UNLABELLED where no mask)."""
    n, h, w = masks.shape
    c = probabilities.shape[1]
    if c >= UNLABELLED:
        raise ValueError(f"{c} classes do not fit the uint8 label map (255 is 'unlabelled')")
    scores = torch.zeros(c, h * w)
    probs = torch.from_numpy(probabilities).float()
    for start in range(0, n, chunk):
        block = torch.from_numpy(masks[start : start + chunk].reshape(-1, h * w)).float()
        scores += probs[start : start + chunk].T @ block
    labels = scores.argmax(0).numpy().astype(np.uint8).reshape(h, w)
    labels[~masks.any(0)] = UNLABELLED
    return labels


def segment_image(model, rgb: np.ndarray, masks: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    if len(masks) == 0:
        return np.full(rgb.shape[:2], UNLABELLED, np.uint8)
    return pixel_labels(masks, class_probabilities(model, rgb, masks, class_names))


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """[C, C] counts, rows ground truth, columns prediction; unlabelled predictions
    count as misses of the ground-truth class (they are nobody's true positive)."""
    valid = gt != ignore_index
    gt, pred = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    pred = np.where(pred < num_classes, pred, num_classes)  # UNLABELLED -> an extra column
    matrix = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return matrix.reshape(num_classes, num_classes + 1)


def miou(matrix: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU over classes that occur in ground truth or prediction; per-class IoU (nan if absent)."""
    num_classes = matrix.shape[0]
    tp = np.diag(matrix[:, :num_classes]).astype(np.float64)
    gt_total = matrix.sum(1)
    pred_total = matrix[:, :num_classes].sum(0)
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"), iou
