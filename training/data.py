"""Training samples from curated datasets, and the paper's augmentation (§4.2):
random resize by a factor in [0.5, 2], then a random square crop; masks follow the
pixels exactly, and segments cropped away are dropped."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from usesearch.curation.dataset import read_records, stale_contents
from usesearch.errors import UsesearchError
from usesearch.io.files import decode, indexed_limits, read_bytes
from usesearch.masks import rle
from usesearch.models.text_keys import text_key


@dataclass
class Sample:
    path: str
    rles: list[dict]
    texts: list[list[str]]  # every text of each segment; one is sampled per step
    sha256: str | None = None  # the photo's, as curated: a file replaced since is refused
    left_out: tuple[str, ...] = ()  # the text kinds ``load_samples`` left out (``TrainConfig.skip_kinds``)


def check_two_texts(samples: list[Sample]) -> None:
    """Refuse data whose segments hold fewer than two different texts (as CLIP reads
    them): every batch's loss is then 0, and the run trained its steps at loss 0.000000,
    exited 0 and offered a head that learned nothing."""
    texts: dict[str, str] = {}  # each as first spelled
    for t in (t for s in samples for segment in s.texts for t in segment):
        texts.setdefault(text_key(t), t)
    if len(texts) < 2:
        held = f"one text only ({next(iter(texts.values()))!r})" if texts else "no text"
        raise UsesearchError(
            f"the training data holds {held}: a contrastive loss learns nothing from one text "
            "(its segments have no negative); curate more photos with other texts, or give more datasets"
        )


def check_one_photo_batches(samples: list[Sample], batch_images: int) -> None:
    """Refuse batches of one photo where no photo can give a negative (two segments with
    texts, two different texts among them: one text is drawn a segment a step): every
    step's loss had none, and the run exited 0 with a head that learned nothing."""
    if batch_images != 1 or any(_can_contrast(s) for s in samples):
        return
    raise UsesearchError(
        "with --batch-images 1 each step's batch is one photo, and no photo holds two segments with different "
        "texts: the contrastive loss would have no negative at any step; give --batch-images 2 or more"
    )


def _can_contrast(sample: Sample) -> bool:
    texted = [segment for segment in sample.texts if segment]
    return len(texted) > 1 and len({text_key(t) for segment in texted for t in segment}) > 1


def data_identity(samples: list[Sample]) -> dict:
    """What a resumed run must train on: the same images, in the same order, with the
    same segments (the data order and the schedule's length derive from them), and
    the same masks, texts and photo contents (``content``)."""
    listing = json.dumps([(s.path, len(s.rles)) for s in samples])
    content = hashlib.sha256()
    for s in samples:
        content.update(json.dumps([s.sha256, [r["counts"] for r in s.rles], s.texts], default=str).encode())
    return {
        "images": len(samples),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "content": content.hexdigest(),
    }


def load_samples(
    dataset_dirs: list[str | os.PathLike], skip_kinds: Collection[str] = (), kinds_seen: set[str] | None = None
) -> list[Sample]:
    """Every photo with segments that have texts, from curated dataset folders (a
    folder that is not one is refused in one line); texts of ``skip_kinds`` left out
    first, so a segment that had only those is no training segment. A photo curated by several sources
    (or in several folders) is one sample: its segments merged by mask NMS, as one
    curation merges an image's duplicates, so one source's text for an object is never
    a negative for another's text for the same object. A photo replaced and curated
    again is its current content's sample only (``stale_contents``). ``kinds_seen``, where
    given, gets the kinds of the texts read (those left out too)."""
    from usesearch.curation.dataset import read_segments
    from usesearch.curation.masks import mask_nms

    # Two reads of the shards, not every record held at once: the first one's paths and contents only.
    stale = stale_contents((r["path"], r["sha256"]) for d in dataset_dirs for r in read_records(d))
    by_photo: dict[str, tuple[str, list]] = {}
    for directory in dataset_dirs:
        for record in read_records(directory):
            if (record["path"], record["sha256"]) in stale:  # a photo replaced and curated again
                continue
            segments = read_segments(record)
            if kinds_seen is not None:
                kinds_seen.update(t.kind for segment in segments for t in segment.texts)
            segments = [_without(s, skip_kinds) for s in segments] if skip_kinds else segments
            segments = [s for s in segments if s.texts]
            if segments:
                path, merged = by_photo.setdefault(record["sha256"], (record["path"], []))
                merged.append(segments)
    samples = []
    for sha256, (path, groups) in by_photo.items():
        segments = groups[0] if len(groups) == 1 else mask_nms([s for group in groups for s in group])
        texts = [list(dict.fromkeys(t.text for t in s.texts)) for s in segments]
        samples.append(Sample(path, [s.rle for s in segments], texts, sha256, tuple(sorted(set(skip_kinds)))))
    return samples


def _without(segment, kinds: Collection[str]):
    return replace(segment, texts=[t for t in segment.texts if t.kind not in kinds])


def decode_masks(rles: list[dict]) -> np.ndarray:
    return rle.decode_stack(rles)


def augment(
    rgb: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    crop: int,
    scale: tuple[float, float] = (0.5, 2.0),
    base: str = "crop",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (RGB, [M, h, w] masks, indices of the segments that survive). The crop is at
    most crop x crop and is *not* padded here: the model letterboxes it onto a
    crop-sized canvas (``USE.pixels(rgb, canvas=crop)``), padding with each
    backbone's mean colour exactly as at inference, where black padding would be
    seen by attention and the cls tokens as image content.

    §4.2's factor from 0.5 to 2 scales the photo as inference shows it: its longest
    side at the crop (inference fills the model's input with it). Drawn on the photo's
    own pixels, a 192-px photo trained at a third of the canvas and was embedded filling
    it: a head overfit on 15 annotations named 14 of them in training's geometry and 7
    in inference's (mmsegmentation's RandomResize with keep_ratio scales the same way).
    ``base="photo"``: the photo's own pixels, for a run started so and resumed."""
    h, w = rgb.shape[:2]
    factor = rng.uniform(*scale) * (crop / max(h, w) if base == "crop" else 1.0)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    image = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
    # Nearest for masks: a mask pixel follows the image pixel it sits on.
    resized = (
        np.stack([np.asarray(Image.fromarray(m).resize((nw, nh), Image.Resampling.NEAREST)) for m in masks])
        if len(masks)
        else np.zeros((0, nh, nw), bool)
    )
    top = int(rng.integers(0, max(nh - crop, 0) + 1))
    left = int(rng.integers(0, max(nw - crop, 0) + 1))
    ch, cw = min(crop, nh - top), min(crop, nw - left)
    out_rgb = np.ascontiguousarray(image[top : top + ch, left : left + cw])
    out_masks = np.ascontiguousarray(resized[:, top : top + ch, left : left + cw])
    keep = np.flatnonzero(out_masks.reshape(len(masks), -1).any(1))
    return out_rgb, out_masks[keep], keep


def load_image(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The photo and its masks, refused when they do not fit each other (a photo replaced
    since curation, or one whose EXIF rotation its annotations did not follow). Read
    within its own curated size: `curate run --max-pixels` let it in."""
    h, w = sample.rles[0]["size"] if sample.rles else (0, 0)
    max_bytes, max_pixels = indexed_limits(w, h)
    data, sha256 = read_bytes(sample.path, max_bytes)
    if sample.sha256 is not None and sha256 != sample.sha256:
        raise UsesearchError("the photo changed since it was curated (its SHA-256 differs): curate it again")
    rgb, masks = decode(data, sample.path, max_pixels), decode_masks(sample.rles)
    if masks.shape[1:] != rgb.shape[:2]:
        h, w = masks.shape[1:]
        raise UsesearchError(f"its masks are {w}x{h} but the photo is {rgb.shape[1]}x{rgb.shape[0]}")
    return rgb, masks
