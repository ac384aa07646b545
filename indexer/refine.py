"""A second stage for text queries (``query --refine sam3``): USE finds the candidate
photos across the index, then SAM 3 segments the query's phrase in the top N of them.

USE ranks stored, class-agnostic proposals: a hit is whichever mask SAM happened to
propose, matched without its context. SAM 3 returns every instance of a noun phrase
with its own mask, but one photo at a time. Here the USE search picks the photos (its
best segment per photo, ``per_image``, with the caller's other filters) and SAM 3
runs on each with the query text.

**The ranking** (one rule): refined hits are ordered by SAM 3's score (its presence
probability times the instance's, in [0, 1]) and keep those above SAM 3's threshold
(0.5 for the real model); ties go to the higher ``use_score``, then to the photo USE
ranked higher. ``use_score`` is the USE score (cosine with the query) of the stored
segment that overlaps the instance best (mask IoU), and ``segment_id`` names that
segment (0 where no stored segment overlaps), among those ``label``, ``split`` and
``source`` keep (which also choose the photos). ``per_image``, ``distinct`` and
``min_area`` apply to the refined hits as to any; ``min_score`` (a cosine) and
``path`` choose the photos.

SAM 3's image step (the expensive one) is cached per photo (``refine_cache``), so a
second phrase over the same photos costs the phrase step only; the phrase is encoded
once per query, not once per photo."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from usesearch.errors import ClientGoneError, UsesearchError, first_line
from usesearch.io.files import decode, pixel_count, read_bytes
from usesearch.masks import rle

from .catalog import index_flags
from .filters import SearchFilters, check_filters, check_k
from .hits import Hit, first_hits, has_labels
from .known_images import record_limits
from .refine_cache import CACHE_FOLDER, ImageStateCache

REFINERS = ("sam3",)
DEFAULT_TOP = 20  # photos SAM 3 looks at
MAX_TOP = 200


@dataclass(frozen=True)
class RefinedHit(Hit):
    """A SAM 3 instance: ``score`` is SAM 3's, ``mask`` its mask at the photo's size
    (COCO RLE), ``bbox`` the mask's box; ``use_score`` and ``segment_id`` are those of
    the stored segment overlapping it best (``overlap``: their IoU); ``photo_rank``:
    the photo's rank in the USE search."""

    use_score: float | None = None
    overlap: float = 0.0
    photo_rank: int = 0
    refined_by: str = "sam3"


@dataclass(frozen=True)
class RefineOptions:
    """``top``: photos of the USE search SAM 3 looks at. ``model``: a SAM 3 model name
    (``usesearch.masks.sam3.SAM3_MODELS``); None: ``tiny`` for an index built with the
    tiny preset, else ``sam3``. ``threshold``: SAM 3's score threshold (None: the
    model's). ``memory_bytes``/``disk_bytes``: the image-step cache's bounds (0 on
    disk: no files). ``batch``: photos SAM 3's image and phrase steps take at once."""

    top: int = DEFAULT_TOP
    model: str | None = None
    checkpoint: str | None = None
    threshold: float | None = None
    device: str | None = None
    memory_bytes: int = 4 << 30
    disk_bytes: int = 0
    batch: int | None = None  # photos per SAM 3 call; None: 8 on a GPU, 1 on a CPU (no gain there)

    def __post_init__(self) -> None:
        if not 1 <= self.top <= MAX_TOP:
            raise ValueError(f"--refine-top must be between 1 and {MAX_TOP}, got {self.top}")


@dataclass
class RefineReport:
    """What a refined query did: photos looked at, image steps run (a cache miss
    each), photos skipped and why, and milliseconds per stage."""

    photos: int = 0
    image_steps: int = 0
    cached: int = 0
    skipped: list[str] = field(default_factory=list)
    ms: dict[str, float] = field(default_factory=dict)

    @property
    def refined(self) -> int:
        """The photos SAM 3 looked at: those chosen less those skipped (one line each)."""
        return self.photos - len(self.skipped)


class Refiner:
    """SAM 3 over the top photos of an index's USE search. Loads SAM 3 once; safe to
    share between threads (SAM 3 runs for one query at a time)."""

    def __init__(
        self,
        index,
        options: RefineOptions | None = None,
        sam3=None,
        hold: Callable[[int], AbstractContextManager] | None = None,
    ):
        """``sam3``: a ``Sam3Model`` already loaded (else loaded here as ``options`` say).
        ``hold(pixels)``: a pixel budget each decoded photo holds until its batch is
        encoded (a server's, shared with its thumbnails and tiles); None: none."""
        from usesearch.masks.sam3 import load_sam3

        self.hold = hold or (lambda pixels: nullcontext())
        self.index, self.options = index, options or RefineOptions()
        name = self.options.model or ("tiny" if index.info.preset == "tiny" else "sam3")
        device = self.options.device or index.device  # the index's models' device (--device), by default
        self.sam3 = sam3 or load_sam3(name, self.options.checkpoint, device)
        folder = Path(index.db_dir) / CACHE_FOLDER / self.sam3.identity
        self.cache = ImageStateCache(
            self.options.memory_bytes, folder, self.options.disk_bytes, bound_over=folder.parent
        )
        self._lock = threading.Lock()
        self.last = RefineReport()

    def close(self) -> None:
        self.cache.close()

    def query(
        self, text: str, k: int = 10, filters: SearchFilters | None = None, top: int | None = None
    ) -> list[RefinedHit]:
        """The ``k`` best SAM 3 instances of ``text`` in the top ``top`` photos (None:
        the options') of the USE search with ``filters``; what it did in ``last``."""
        hits, self.last = self.search(text, k, filters, top)
        return hits

    def search(
        self,
        text: str,
        k: int = 10,
        filters: SearchFilters | None = None,
        top: int | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> tuple[list[RefinedHit], RefineReport]:
        """``query`` with its report returned (for callers in several threads). ``gone()``
        is asked before each batch of SAM 3: true (a web client went away), the search
        stops with ``ClientGoneError`` instead of spending minutes on an answer no one reads."""
        k = check_k(k)
        top = self.options.top if top is None else replace(self.options, top=top).top  # checked as the options are
        filters = check_filters(filters)  # (a dict of its fields too)
        report, started = RefineReport(), time.perf_counter()
        index = self.index
        vector = index.text_vector(text)
        # The photos: their best stored segment each, whatever its size (``min_area`` is
        # for SAM 3's instances: a photo of small stored segments may hold a large one).
        chosen = replace(filters, per_image=True, distinct=False, min_area=0)
        photos = index.search_vector(vector, top, chosen)
        report.photos = len(photos)
        report.ms["use"] = _ms(started)
        found: list[RefinedHit] = []
        with self._lock:
            phrase = time.perf_counter()
            encoded = self.sam3.encode_text(text)
            report.ms["text"] = _ms(phrase)
            labels = (filters.label, filters.split, filters.source)  # the stored segments an instance is linked to
            seen = {photo.image_id for photo in photos}
            while photos:
                for group in self._groups(photos, report, gone or (lambda: False), first=report.photos - len(photos)):
                    found += self._segment(group, encoded, vector, labels)  # (one batch alive at a time)
                    del group  # before the next batch's features are made
                # Photos skipped (gone, changed): the next ones in the ranking take their places, as
                # --refine-top asked (up to twice as many tried: an index of gone files ends).
                wanted = min(top - report.refined, 2 * top - report.photos)
                more = index.search_vector(vector, report.photos + wanted, chosen) if wanted > 0 else []
                photos = [photo for photo in more if photo.image_id not in seen][:wanted]
                seen.update(photo.image_id for photo in photos)
                report.photos += len(photos)
        report.ms["sam3"] = _ms(phrase)
        found.sort(key=lambda h: (-h.score, -(h.use_score if h.use_score is not None else -2.0), h.photo_rank))
        hits = first_hits(found, k, filters.per_image, filters.min_area, filters.distinct)
        report.ms["total"] = _ms(started)
        return hits, report

    def _groups(
        self, photos: list[Hit], report: RefineReport, gone: Callable[[], bool], first: int = 0
    ) -> Iterator[list[tuple[int, Hit, list]]]:
        """(USE rank, photo, SAM 3 image features) of the photos that can be read, a
        batch of photos at a time: from the cache, else decoded and computed together
        and kept. Only the cache (bounded) and the batch being segmented hold features:
        at ``--refine-top 200`` on a GPU all of them at once would take 11-22 GB."""
        ranked = list(enumerate(photos, first + 1))  # (``first``: photos before these, looked at already)
        for start in range(0, len(ranked), self._batch):
            if gone():
                raise ClientGoneError(
                    f"the client went away; stopped before photo {first + start + 1} of {first + len(ranked)}"
                )
            group = self._ready(ranked[start : start + self._batch], report)
            if group:  # every photo of the batch skipped: nothing to segment
                yield group
            del group  # before the next batch's features are made

    def _ready(self, window: list[tuple[int, Hit]], report: RefineReport) -> list[tuple[int, Hit, list]]:
        with ExitStack() as held:  # each decoded photo's pixels, until the batch is encoded
            return self._encoded(window, report, held)

    def _encoded(self, window: list[tuple[int, Hit]], report: RefineReport, held: ExitStack) -> list:
        ready: dict[int, list] = {}
        decoded = []
        flags = index_flags(self.index.db_dir, self.index.store.url)  # (for the commands a skip suggests)
        for rank, photo in window:
            record = self.index.store.image(photo.image_id)
            if record is None or not record.sha256:
                report.skipped.append(f"{photo.image}: no longer in the index")
                continue
            try:  # the file checked even when its features are cached: gone or changed, it is skipped
                max_bytes, max_pixels = record_limits(record)
                data, sha256 = read_bytes(record.fs_path, max_bytes, record.path)
                if sha256 != record.sha256:
                    raise UsesearchError(
                        f"changed on disk since it was indexed (`usesearch index PHOTOS {flags}` again)"
                    )
                features = self.cache.get(record.sha256, self.sam3.device)
                if features is not None:
                    ready[rank] = features
                    report.cached += 1
                    continue
                held.enter_context(self.hold(pixel_count(data, record.path, max_pixels)))  # past the budget: skipped
                decoded.append((rank, record.sha256, decode(data, record.path, max_pixels)))
            except FileNotFoundError:
                report.skipped.append(
                    f"{record.path}: no longer on disk (`usesearch prune {flags}` drops it from the index)"
                )
            except (OSError, UsesearchError) as exc:
                report.skipped.append(f"{record.path}: {first_line(exc)}")
        if decoded:
            for (rank, key, _), features in zip(decoded, self.sam3.encode_images([rgb for _, _, rgb in decoded])):
                ready[rank] = features
                self.cache.put(key, features)
                report.image_steps += 1
        return [(rank, photo, ready[rank]) for rank, photo in window if rank in ready]

    def _segment(self, group: list[tuple[int, Hit, list]], encoded: dict, vector: np.ndarray, labels) -> list:
        """The refined hits of one batch (a function of its own: its locals, which hold
        the batch's features, go when it returns)."""
        hws = [tuple(photo.mask["size"]) for _, photo, _ in group]
        every = self.sam3.segment_many([features for _, _, features in group], encoded, hws, self.options.threshold)
        return [
            hit
            for (rank, photo, _), found in zip(group, every)
            for hit in self._hits(photo, rank, found, vector, labels)
        ]

    @property
    def _batch(self) -> int:
        return self.options.batch or (8 if self.sam3.device.type == "cuda" else 1)

    def _hits(self, photo: Hit, photo_rank: int, instances, vector: np.ndarray, labels) -> list[RefinedHit]:
        keep = instances.masks.flatten(1).any(1)  # an instance whose mask is empty at the photo's size: none
        if not bool(keep.any()):
            return []
        masks = rle.encode_stack(instances.masks[keep])
        scores = instances.scores[keep].float().cpu().numpy()
        stored = self._stored_segments(photo.image_id, vector, labels)
        ious = rle.iou_between(masks, [m for _, m, _ in stored]) if stored else np.zeros((len(masks), 0))
        out = []
        for mask, score, row in zip(masks, scores, ious):
            best = int(row.argmax()) if row.size and row.max() > 0 else None
            out.append(
                RefinedHit(
                    rank=0,
                    score=float(score),
                    segment_id=stored[best][0] if best is not None else 0,
                    image_id=photo.image_id,
                    image=photo.image,
                    bbox=tuple(rle.bbox(mask)),  # type: ignore[arg-type]
                    area=rle.area(mask),
                    mask=mask,
                    image_fs_path=photo.image_fs_path,
                    use_score=stored[best][2] if best is not None else None,
                    overlap=float(row[best]) if best is not None else 0.0,
                    photo_rank=photo_rank,
                    source="sam3",
                )
            )
        return out

    def _stored_segments(self, image_id: int, vector: np.ndarray, labels) -> list[tuple[int, dict, float]]:
        """(id, RLE, USE score) of every stored segment of the photo of this class,
        split and source (``has_labels``): a search of annotations links an instance
        to an annotation, never to a proposal it overlaps."""
        store = self.index.store
        every = store.image_segment_ids(image_id)
        rows = {i: row for i, row in store.rows(every).items() if has_labels(row, labels)}
        ids = [i for i in every if i in rows]  # (in the photo's order: ties go as before)
        scores: dict[int, float] = {}
        for batch_ids, vectors in store.embeddings(ids):
            scores.update(zip(batch_ids.tolist(), (vectors @ vector).tolist()))
        return [
            (i, {"size": list(rows[i].image_hw), "counts": rows[i].rle_counts}, scores[i])
            for i in ids
            if i in rows and i in scores
        ]


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)
