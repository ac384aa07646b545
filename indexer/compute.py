"""The models' side of the sequential indexer: photos -> masks -> segment rows and
embeddings, apart from the commits.

``compute_group`` never touches the store, so on a GPU it runs in a thread of its
own one group ahead of the commits (``ModelStage``): while the card computes the
next photos, this thread's caller writes the last ones' rows, RLEs, embedding rows
and FAISS entries, and the card does not wait for SQLite. On a CPU the models use
every core and a group takes tens of seconds, so it runs in line (Ctrl-C stays
immediate and nothing changes there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np

from usesearch.devices import out_of_memory_in
from usesearch.masks.proposals import proposal_masks
from usesearch.side_stream import release_work_aside

from .read_ahead import Photo

T = TypeVar("T")


@dataclass
class Computed:
    """A group's outcome: per photo (segment rows, embeddings) or the exception that
    photo met, and the models' clocks while computing it."""

    photos: list[Photo]
    outcomes: list[tuple[list[dict], np.ndarray] | BaseException] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    masker_seconds: float = 0.0
    model_seconds: float = 0.0


def compute_group(group: list[Photo], model, masker) -> Computed:
    """``compute_photos`` of a group of decoded photos, with the models' clocks."""
    done = Computed(group)
    before = stage_seconds(model, masker)
    done.outcomes = compute_photos([p.rgb for p in group], [p.found.path for p in group], model, masker, done)
    after = stage_seconds(model, masker)
    done.stages = {stage: seconds - before.get(stage, 0.0) for stage, seconds in after.items()}
    return done


def photos_per_masker_call(masker) -> int:
    """Photos to hand the masker at once: several where it batches them (SAM's image
    encoder, ``--encoder-batch``), else one."""
    return max(1, getattr(masker, "images_per_call", 1))


def compute_photos(
    rgbs: list[np.ndarray], paths: list[str], model, masker, clock
) -> list[tuple[list[dict], np.ndarray] | BaseException]:
    """Each photo's (segment rows, embeddings), or the exception that photo met: the
    masks of all of them in one masker call (give at most ``photos_per_masker_call``),
    then each photo's embeddings. A batch that fails is retried photo by photo, so one
    photo's failure is its own. ``clock`` (a report) gets the masker's and models' seconds."""
    prepare = getattr(model, "prepare", None)
    if prepare is not None:  # the backbones' resizing, in a thread while SAM runs
        prepare(rgbs)
    start = time.perf_counter()
    try:
        batches = masker.batch(rgbs, paths) if len(rgbs) > 1 else [freed_once(masker, rgbs[0], paths[0])]
    except Exception as exc:  # noqa: BLE001 - one photo's failure must not cost the others
        if len(rgbs) == 1:
            return [exc]  # its own failure: not masked a second time (an out-of-memory pass is costly)
        batches = [None] * len(rgbs)  # each photo alone, below
    else:
        clock.masker_seconds += time.perf_counter() - start
        clock.model_seconds += time.perf_counter() - start
    ahead = getattr(model, "features_ahead", None)
    if ahead is not None:  # on a GPU: the group's backbones in one call (the embedder keeps the time)
        start = time.perf_counter()
        ahead(rgbs)
        clock.model_seconds += time.perf_counter() - start
    outcomes: list[tuple[list[dict], np.ndarray] | BaseException] = []
    for rgb, path, proposals in zip(rgbs, paths, batches):
        try:
            outcomes.append(freed_once(segment_records, rgb, path, proposals, model, masker, clock))
        except Exception as exc:  # noqa: BLE001 - any per-image failure is recorded and the run goes on
            outcomes.append(exc)
    return outcomes


def encoding_ahead(masker, photos: list[np.ndarray]) -> Callable[[], None] | None:
    """SAM's encoder started on ``photos`` aside (``encode_ahead``, a GPU's side stream),
    as a call to make, where it would run now; else None (a CPU, another masker, a
    group size not yet run in line, the stream stopped)."""
    generator = _generator(masker)
    side = getattr(generator, "ahead", None)
    if side is None or not side.starts(photos):
        return None
    return partial(generator.encode_ahead, photos)


def freed_once(call: Callable[..., T], *args) -> T:
    """``call(*args)``; where it runs out of the card's memory while work runs aside
    (SAM's encoder a group ahead, the backbones beside SAM: ``release_work_aside``),
    that work is stopped for the run and the call made once more, so a photo is not
    failed for memory the work aside held."""
    try:
        return call(*args)
    except Exception as exc:
        if out_of_memory_in(exc) is None or not release_work_aside():
            raise
    return call(*args)


def segment_records(rgb: np.ndarray, path: str, proposals, model, masker, clock) -> tuple[list[dict], np.ndarray]:
    """(segment rows, embeddings) of one photo from its proposals (None: the masker
    failed on a batch, so it runs on this photo alone and any error is this photo's).
    ``clock`` (a report) gets the seconds spent in the masker and the models."""
    hw = rgb.shape[:2]
    if proposals is None:
        start = time.perf_counter()
        proposals = masker(rgb, path)
        clock.masker_seconds += time.perf_counter() - start
        clock.model_seconds += time.perf_counter() - start
    start = time.perf_counter()
    embeddings = model.embed_segments(rgb, proposal_masks(proposals, hw))
    clock.model_seconds += time.perf_counter() - start
    segments = [
        dict(
            x=p.bbox[0],
            y=p.bbox[1],
            w=p.bbox[2],
            h=p.bbox[3],
            area=p.area,
            rle_counts=p.rle["counts"],
            predicted_iou=p.predicted_iou,
            stability_score=p.stability_score,
        )
        for p in proposals
    ]
    return segments, embeddings


def stage_seconds(model, masker) -> dict[str, float]:
    """The models' own clocks by stage (SAM's generator, the USE embedder), where they keep them."""
    out = {}
    sam = getattr(_generator(masker), "seconds", None)
    if sam:
        if "encoder ahead" in sam:  # its own thread's clock, not the loop's (usesearch/side_stream.py)
            out["SAM encoder ahead (own thread)"] = sam["encoder ahead"]
        out.update(
            {
                "SAM encoder": sam["encoder"],
                "SAM decoder": sam["decoder"],
                "RLE": sam["rle"],
                "SAM post-processing": sam["total"] - sam["encoder"] - sam["decoder"] - sam["rle"],
            }
        )
    embedder = getattr(model, "seconds", None)
    if embedder:
        out.update({"backbones": embedder["backbones"], "pooling": embedder["pooling"]})
        if "backbones beside SAM" in embedder:  # its own thread's clock, not the loop's (models/ahead.py)
            out["backbones beside SAM (own thread)"] = embedder["backbones beside SAM"]
    return out


class ModelStage:
    """``compute_group`` in one thread a group ahead of the caller (``overlap``, on a
    GPU), or in line. ``submit`` returns a future either way."""

    def __init__(self, model, masker, overlap: bool):
        self.model, self.masker = model, masker
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="usesearch-models") if overlap else None
        self.ahead = 1 if overlap else 0  # groups computing while the caller commits
        for side in _side_streams(model, masker):  # the groups started ahead and not yet taken, at most
            side.keep = self.ahead + 1

    def submit(self, group: list[Photo]) -> Future[Computed]:
        if self.pool is not None:
            # SAM's encoder starts on the group now, on a stream of its own (a GPU's), while
            # the model thread still decodes the group before it (usesearch/side_stream.py).
            start = encoding_ahead(self.masker, [photo.rgb for photo in group])
            if start is not None:
                start()
            return self.pool.submit(compute_group, group, self.model, self.masker)
        future: Future[Computed] = Future()
        future.set_result(compute_group(group, self.model, self.masker))
        return future

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for side in _side_streams(self.model, self.masker):  # work started ahead and never taken (a stop)
            side.close()


def _side_streams(model, masker) -> list:
    """The models' ``SideStream``s (``usesearch/side_stream.py``): SAM's encoder ahead,
    the backbones beside SAM."""
    found = [getattr(_generator(masker), "ahead", None), getattr(model, "beside", None)]
    return [side for side in found if side is not None]


def _generator(masker):
    """SAM's generator behind ``masker`` (``SamMasker.generator``), else None."""
    return getattr(masker, "generator", None)
