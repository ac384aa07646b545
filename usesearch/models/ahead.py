"""The backbones' work on a group of photos, started before the embedder is asked for
it (``USEEmbedder``'s side; the indexer calls ``prepare`` before SAM runs on the group
and ``features_ahead`` after).

By device, three levels:

* **resized ahead** (every device): each photo resized for the backbones in the
  embedder's thread while SAM runs (PIL releases the GIL; in line, the card waited ~7
  ms a photo for it).
* **a group a call** (a GPU, ``features_ahead``): one photo's backbone call is ~1,200
  small kernels; a group's photos go through CLIP + DINOv2 + LLNs together.
* **beside SAM** (a GPU, ``prepare``): the group's backbone call is launched from the
  embedder's thread on a CUDA stream of its own while the model thread runs SAM on
  the same photos. SAM's host work between its kernels (read-backs, NMS, RLE) leaves
  the card idle for a third of its clock (the H100 profile: SAM's kernels 108 ms of
  175 ms a photo), and the backbones (~19 ms a photo in line there) fill those gaps
  instead of following SAM (``usesearch/side_stream.py``: the thread, the stream and
  their hand-over). SAM's clocks synchronise their own stream only.

Every level gives the embeddings of one call a photo (tested on the CPU); a photo
whose work ahead failed is computed in line, where any error is that photo's; a card
that runs out of memory for a group's call stops that level for the run, or, where
work ran aside (this side stream or SAM's), that work (``release_work_aside``).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from usesearch.devices import bf16_autocast, out_of_memory_in, synchronize
from usesearch.io.images import to_rgb_array
from usesearch.masks.sam_compile import run_or_uncompile
from usesearch.side_stream import SideStream, release_work_aside


def batches_backbones(device: torch.device) -> bool:
    """Whether ``features_ahead`` batches a group's photos: on a GPU, where one photo's
    backbone call is ~1,200 small kernels and launch-bound; a CPU gains nothing from
    batching and holds more memory."""
    return device.type == "cuda"


def _taken(kept: dict, image):
    """What ``kept`` (id(photo) -> (photo, value)) holds for this very photo object,
    taken out of it; None if nothing (an id is reused once its object is gone, hence the
    identity check; the entry holds its photo, so not while it is kept)."""
    entry = kept.pop(id(image), None)
    return entry[1] if entry is not None and entry[0] is image else None


class Towers(Protocol):
    """What the work ahead reads of ``USE``: its resizes, its pixels, its towers."""

    @property
    def encoder(self) -> torch.nn.Module: ...

    def resize_for_backbones(self, rgb: np.ndarray) -> dict[int, np.ndarray]: ...
    def pixels_from(self, small: dict[int, np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]: ...


class BackbonesAhead:
    """``USEEmbedder``'s work ahead. The embedder sets ``use``, ``device``,
    ``precision`` and ``seconds`` and calls ``_start_ahead`` from its ``__init__``."""

    use: Towers
    device: torch.device
    precision: str
    seconds: dict[str, float]

    def _start_ahead(self) -> None:
        self._thread: ThreadPoolExecutor | None = None  # the resizes' thread, made on first use
        self._prepared: dict[int, tuple[np.ndarray, Future[dict[int, np.ndarray]]]] = {}
        self._features: dict[int, tuple[np.ndarray, torch.Tensor]] = {}  # id(photo) -> (photo, z)
        self.batch_backbones = batches_backbones(self.device)
        # The group's call beside SAM (a GPU's); its clock apart, "backbones" the waiting for it.
        self.beside = SideStream[torch.Tensor](self.device, "usesearch-beside", self.seconds, "backbones beside SAM")

    def prepare(self, rgbs: list[np.ndarray]) -> None:
        """Start these photos' backbone work while the caller runs SAM on them: on a GPU
        (``beside.on``) the group's backbone call on a stream of its own (once a group
        of its size ran in line: ``SideStream``), else their resizing in a thread.
        ``image_features`` then finds it done or under way. Work prepared earlier and
        never used (a failed photo) is dropped."""
        self._prepared = {}
        self.beside.drop()
        self.beside.start(rgbs, self._towers_of)  # (where on, for a group size run in line before)
        if self.beside.started(rgbs):
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="usesearch-resize")
        self._prepared = {id(rgb): (rgb, self._thread.submit(self._resize, rgb)) for rgb in rgbs}

    def prepared(self, image) -> bool:
        """Whether work ahead was kept for this very photo object (else, a copy of it)."""
        return any(id(image) in kept for kept in (self._prepared, self._features)) or self._in_group(image)

    def _in_group(self, image) -> bool:
        return self.beside.group_of(image) is not None

    def _resize(self, image) -> dict[int, np.ndarray]:
        return self.use.resize_for_backbones(to_rgb_array(image))

    def _small(self, image) -> dict[int, np.ndarray]:
        """The photo resized for the backbones: ``prepare``'s result where it has one."""
        prepared = _taken(self._prepared, image)
        return prepared.result() if prepared is not None else self._resize(image)

    def _features_of(self, images: list) -> torch.Tensor:
        """z [len(images), grid*grid, D] (float32), the photos in one backbone call."""
        return self._towers([self._small(image) for image in images])

    @torch.inference_mode()
    def _towers(self, smalls: list[dict[int, np.ndarray]]) -> torch.Tensor:
        pixels = [self.use.pixels_from(small, self.device) for small in smalls]
        clip_px, dino_px = (torch.stack(side) for side in zip(*pixels))
        with bf16_autocast(self.device, self.precision):
            z = run_or_uncompile(self.use.encoder, lambda: self.use.encoder(clip_px, dino_px), "the image towers")
        return z.float()

    def _towers_of(self, rgbs: list[np.ndarray]) -> torch.Tensor:
        """The side thread's call: the photos resized and through the towers together."""
        return self._towers([self._resize(rgb) for rgb in rgbs])

    def _beside_features(self, image) -> torch.Tensor | None:
        """This photo's features from the call ``prepare`` started beside SAM (the
        group's others kept for their turn); None where there is none or it failed
        (the photo's own call meets the failure again, as that photo's error)."""
        group = self.beside.group_of(image)
        if group is None:
            return None
        z = self.beside.take(group)
        if z is None:
            return None
        self._features = {id(photo): (photo, z[row]) for row, photo in enumerate(group)}
        return _taken(self._features, image)

    def features_ahead(self, images: list) -> None:
        """Where ``batch_backbones`` is set (a GPU), run these photos through the
        backbones in one call and keep each photo's features for its ``embed_segments``
        (found by the very object given, as ``prepare`` finds its work). Photos whose
        call ``prepare`` started beside SAM need none. Features kept earlier and never
        used (a failed photo) are dropped. A failure here is left to each photo's own
        call, which meets it again as that photo's error."""
        self._features = {}
        if not self.batch_backbones or len(images) < 2 or all(self._in_group(image) for image in images):
            return
        start, short = time.perf_counter(), None  # (short: whether a failure was out of memory)
        try:
            z = self._features_of(images)
            synchronize(self.device)  # so the backbones' time is theirs
            self.beside.ran_in_line(images)  # (compiled here: groups of this size may now go aside)
        except Exception as exc:  # noqa: BLE001 - each photo's own call fails again, as that photo's error
            short = out_of_memory_in(exc) is not None
        finally:
            self.seconds["backbones"] += time.perf_counter() - start
        if short is not None:  # (past the handler: its traceback held the failed group's tensors)
            # Out of memory (the compiler may wrap it): work aside's doing where some is in
            # use, stopped for good; else a card too small for a group: one photo a call, for good.
            if short and not release_work_aside():
                self.batch_backbones = False
                torch.cuda.empty_cache()
            return
        self._features = {id(image): (image, z[i]) for i, image in enumerate(images)}

    def image_features(self, image) -> torch.Tensor:
        """Patch features z [grid*grid, D] (float32) of one image; reuse them for any
        number of masks. The backbones and LLNs run under bfloat16 autocast where
        ``precision`` says (a GPU's default)."""
        found = self._beside_features(image)
        if found is None:
            found = _taken(self._features, image)
        if found is None:
            found = self._features_of([image])[0]
            self.beside.ran_in_line([image])
        return found

    def _drop_ahead(self) -> None:
        """Forget the work done ahead (computed by towers since found wrong)."""
        self._features = {}
        self.beside.drop()
