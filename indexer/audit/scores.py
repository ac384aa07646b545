"""How suspect each item of a labelled dataset is, as pure functions over arrays: the
audit's five lists score batches of stored embeddings and masks with these, so each
rule is tested on arrays and the driver (``run.py``) only streams and keeps the best.

Embeddings are the index's unit vectors; ``labels`` index the dataset's classes."""

from __future__ import annotations

import numpy as np
import torch

from usesearch.masks import rle
from usesearch.tasks.audit import label_margins
from usesearch.tasks.semseg import LOGIT_SCALE

# A proposal this much inside annotations of its photo is annotated (a part of an
# annotated object is, too): at most this share outside every annotation is "overlooked".
OVERLOOKED_MAX_COVERED = 0.2
SAME_CLASS_TOP = 3  # a proposal is of an annotation's class where that class is among its likeliest three


def class_probabilities(embeddings: np.ndarray, class_vectors: np.ndarray) -> np.ndarray:
    """[N, C] softmax over the dataset's classes at the scale the head is trained with,
    as ``segment`` and ``eval`` classify (``tasks.semseg.class_probabilities``)."""
    logits = (
        LOGIT_SCALE
        * torch.from_numpy(np.ascontiguousarray(embeddings, np.float32))
        @ torch.from_numpy(np.ascontiguousarray(class_vectors, np.float32)).T
    )
    return torch.softmax(logits, dim=1).numpy()


def _others_cosine(e: np.ndarray, labels: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine of each annotation with the sum of the *other* members of its class, which
    is the direction of their mean; True where there are none)."""
    others = (sums[labels] - e).astype(np.float32)
    norms = np.linalg.norm(others, axis=1)
    return np.einsum("nd,nd->n", e, others) / np.where(norms == 0, 1, norms), norms == 0


def prototype_probabilities(embeddings: np.ndarray, labels: np.ndarray, sums: np.ndarray, counts: np.ndarray):
    """[N, C] softmax over the cosines with each class's mean annotation (its own class's
    taken without the annotation itself): what the dataset's other labels say."""
    e = np.asarray(embeddings, np.float32)
    cos = e @ prototypes(sums).T
    cos[np.arange(len(e)), labels] = _others_cosine(e, labels, sums)[0]
    cos[:, counts == 0] = -1
    logits = torch.from_numpy(LOGIT_SCALE * cos)
    return torch.softmax(logits, dim=1).numpy().astype(np.float32)


def swapped(
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_vectors: np.ndarray,
    sums: np.ndarray | None = None,
    counts: np.ndarray | None = None,
):
    """(margin, preferred class, label's probability, preferred's probability) per
    annotation: margin > 0 where the model prefers another class than the label (NaN,
    no candidate, elsewhere). With
    the classes' embedding sums, the model's text classifier is averaged with the
    dataset's own (``prototype_probabilities``): a weak head's text alignment then
    counts for half, what the other annotations of each class look like for the rest."""
    probs = class_probabilities(embeddings, class_vectors)
    if sums is not None and counts is not None:
        probs = (probs + prototype_probabilities(embeddings, labels, sums, counts)) / 2
    margin, preferred = label_margins(probs, labels)
    # Listed only where another class wins: an annotation the model agrees with is no
    # suspect (each one was listed, so a clean dataset never came out clean); one class
    # alone: nothing can be swapped.
    margin = np.where((preferred == labels) | ~(margin > 0), np.nan, margin)
    rows = np.arange(len(labels))
    return margin, preferred, probs[rows, labels], probs[rows, preferred]


def centroid_distances(embeddings: np.ndarray, labels: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """1 - cosine of each annotation with the mean of the *other* members of its class
    (its own embedding taken out of the class sum); NaN where it is its class's only one."""
    e = np.asarray(embeddings, np.float32)
    cos, none = _others_cosine(e, labels, sums)
    lonely = (counts[labels] < 2) | none
    out = 1 - cos / np.maximum(np.linalg.norm(e, axis=1), 1e-12)
    out[lonely] = np.nan
    return out.astype(np.float32)


def prototypes(sums: np.ndarray) -> np.ndarray:
    """[C, d] unit mean embedding of each class's annotations (zero where it has none):
    what the dataset itself calls each class."""
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms == 0, 1, norms)).astype(np.float32)


def overlooked(
    class_sims: np.ndarray, covered: np.ndarray, max_covered: float = OVERLOOKED_MAX_COVERED
) -> tuple[np.ndarray, np.ndarray]:
    """(score, proposed class) per proposal: its cosine with the closest class prototype
    where at most ``max_covered`` of it lies inside an annotation of its photo, NaN
    elsewhere (it is annotated). ``class_sims``: [P, C] each proposal's cosine with
    each class prototype (``prototypes``); ``covered``: [P] the largest share of each
    proposal inside one annotation (``coverage``)."""
    sims = np.asarray(class_sims, np.float32)
    proposed = sims.argmax(1) if sims.shape[1] else np.zeros(len(sims), np.int64)
    score = sims[np.arange(len(sims)), proposed] if sims.shape[1] else np.full(len(sims), np.nan, np.float32)
    score = np.where(covered <= max_covered, score, np.nan).astype(np.float32)
    return score, proposed


def overlaps(
    proposal_rles: list[dict],
    annotation_rles: list[dict],
    proposal_areas: np.ndarray | None = None,
    annotation_areas: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(covered [P, A]: the share of each proposal inside each annotation, IoU [A, P]) of
    one photo's masks, from one pycocotools pass: the intersection is the share times
    the proposal's area (the areas: as stored, or counted here)."""
    covered = rle.covered_by(proposal_rles, annotation_rles)
    p_area = np.array([rle.area(m) for m in proposal_rles] if proposal_areas is None else proposal_areas, np.float64)
    a_area = np.array(
        [rle.area(m) for m in annotation_rles] if annotation_areas is None else annotation_areas, np.float64
    )
    inter = covered * p_area[:, None]
    union = p_area[:, None] + a_area[None, :] - inter
    return covered, (inter / np.where(union > 0, union, 1)).T


def coverage(covered: np.ndarray) -> np.ndarray:
    """[P] the largest share of each proposal inside one annotation of its photo (0 when
    the photo has none), from ``overlaps``' [P, A] shares."""
    return covered.max(1) if covered.shape[1] else np.zeros(len(covered))


def badly_located(
    ious: np.ndarray, annotation_labels: np.ndarray, proposal_classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(1 - IoU, proposal position) per annotation of one photo (``ious``: [A, P] from
    ``overlaps``): its overlap with the best-overlapping proposal that the model puts in
    the annotation's class (``proposal_classes``: [P, K], each proposal's K likeliest
    classes: a small model's first guess alone would often miss the object's own
    proposal and compare with another; any proposal where none is). A mask that misses or spills over
    its object overlaps its object's proposal poorly; a photo without proposals gives NaN
    (nothing to compare with)."""
    n = len(ious)
    if not ious.shape[1]:
        return np.full(n, np.nan, np.float32), np.full(n, -1, np.int64)
    top = np.asarray(proposal_classes).reshape(ious.shape[1], -1)
    same = (np.asarray(annotation_labels)[:, None, None] == top[None, :, :]).any(2)
    has_same = same.any(1)
    masked = np.where(same | ~has_same[:, None], ious, -1.0)
    best = masked.argmax(1)
    return (1 - masked[np.arange(n), best]).astype(np.float32), best.astype(np.int64)
