"""The models an opened index answers with, each loaded when first needed: the text
side for a query by text, the whole model for a search by a region, SAM for a region
picked by a point or a box. All of them are the index's own (its preset, embedder and
head) on one device, and a model that is not the one the index was built with is refused."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usesearch.devices import explicit_device, resolve_device
from usesearch.errors import IndexMismatchError, MissingWeightsError, NotFoundError, UsesearchError

from .folder import HEAD_COPY, HEAD_FILES, head_to_load
from .records import IndexInfo, info_summary

if TYPE_CHECKING:  # the model side loads with the first model (``info``, ``failures``: ~4 s and ~800 MB less)
    from usesearch.models.model import SegmentEmbedder, TextEmbedder


class IndexModels:
    """Loads each model once; ``check_open`` refuses a load once the index is closed.
    Using a model (one thread at a time per side) is the caller's to order."""

    def __init__(
        self, info: IndexInfo, device: str | None, model: SegmentEmbedder | None, check_open: Callable, folder: Path
    ):
        self.info = info
        self.head = head_to_load(folder, info.model_head)  # its copy in the folder where it has one
        self._copy = folder / HEAD_COPY
        self._device_asked, self._device = device, explicit_device(device)  # an explicit one is checked now
        self._whole, self._given = model, model is not None
        self._text: TextEmbedder | None = None  # the text side alone, until the whole model loads
        self._sam: Any = None
        # A lock a model's load holds, each apart: loading the whole model or SAM (seconds,
        # gigabytes) holds up no text query; ``_lock`` alone guards the text side's load and
        # the swap to the whole model, taken after ``_whole_lock`` where both are.
        self._lock = threading.Lock()
        self._whole_lock = threading.Lock()
        self._sam_lock = threading.Lock()
        self._check_open = check_open

    @property
    def device(self):
        """Where the models run (``usesearch.devices``), resolved with the first asked for."""
        if self._device is None:
            self._device = resolve_device(self._device_asked)
        return self._device

    @property
    def loaded(self) -> set[str]:
        """What is in memory: "whole", "text" (the text side alone), "sam"."""
        held = {"whole": self._whole, "text": self._text, "sam": self._sam}
        return {name for name, model in held.items() if model is not None}

    def whole(self) -> SegmentEmbedder:
        """The whole model: a segment is embedded with it (a search by a region)."""
        with self._whole_lock:
            self._check_open()  # never loaded again once closed
            model = self._whole
            if model is None:
                model = self._load(text_only=False)
                with self._lock:
                    self._whole, self._text = model, None  # the whole model's text side takes over
        return self._checked(model)

    def text(self) -> TextEmbedder:
        """What a text query needs: the whole model where it is loaded, else its text side
        alone (``load_text_model``: no DINOv2, no image tower to build or hold)."""
        held = self._whole or self._text
        if held is not None:  # (while the whole model loads, its text side answers)
            return self._checked(held)
        from usesearch.models.factory import text_needs_whole_model

        if text_needs_whole_model(self.info.embedder, self.head):
            return self.whole()  # (loaded once, however many sides ask at first)
        with self._lock:
            self._check_open()
            if self._whole is None and self._text is None:
                self._text = self._load(text_only=True)
            model = self._whole or self._text
        assert model is not None
        return self._checked(model)

    def sam(self):
        """The SAM of the index's preset, for a region picked by a point or a box."""
        with self._sam_lock:
            self._check_open()
            if self._sam is None:
                from usesearch import get_preset
                from usesearch.masks.sam import load_sam

                preset = get_preset(self.info.preset)
                with self._its_own_weights():
                    self._sam = load_sam(preset.sam, preset.name, None, self.device)
            return self._sam

    def release(self) -> None:
        """Let go of every model (the index is closing)."""
        with self._whole_lock, self._lock, self._sam_lock:
            self._whole = self._text = self._sam = None

    def _checked(self, model):
        if model.fingerprint != self.info.fingerprint:
            # (a search takes no model options: what changed is a file, or usesearch)
            changed = (
                "the model given is not the one it was built with: open it with that one, or none (its own loads)"
                if self._given
                else f"the head at {self.head} is no longer the one it was built with: put that one back"
                if self.head
                else f"preset {self.info.preset!r}'s weights here are not those it was built with (a weights file "
                "replaced, or another usesearch version's): put those back, or index its photos into a new --db"
            )
            raise IndexMismatchError(
                f"this index was built with {info_summary(self.info)}; the model here is {model.fingerprint}: {changed}"
            )
        return model

    def _load(self, text_only: bool):
        from usesearch.models.checkpoint import checkpoint_paths
        from usesearch.models.factory import load_model, load_text_model

        head = self.head
        if head is not None and not all(f.is_file() for f in checkpoint_paths(head)):
            # A copy in the folder missing a file (which the query did not load): said too, as a way on.
            lacking = [name for name in HEAD_FILES if not (self._copy / name).is_file()] if self._copy.is_dir() else []
            copy = f"; the copy in {self._copy} lacks {' and '.join(lacking)}: put that back instead" if lacking else ""
            raise NotFoundError(
                f"this index's head is gone from {head} (moved or deleted since indexing): put it back there{copy}; "
                "a query needs the head the segments were embedded with"
            )
        loader = load_text_model if text_only else load_model
        with self._its_own_weights(), self._original_head_named():
            return loader(self.info.preset, embedder=self.info.embedder, head=head, device=self.device)

    @contextmanager
    def _original_head_named(self):
        """The index's copy of its head damaged: the head it was made from named, where it
        is still there (a copy's failure alone left no way forward)."""
        try:
            yield
        except UsesearchError as refused:
            original, copy = self.info.model_head, self.head
            if not (copy and original and Path(copy) != Path(original) and str(copy) in str(refused)):
                raise  # (not the copy's own fault: missing CLIP weights, say)
            from usesearch.models.checkpoint import checkpoint_paths

            if not all(f.is_file() for f in checkpoint_paths(original)):
                raise
            copies = " and ".join(f"{a} over {b}" for a, b in zip(checkpoint_paths(original), checkpoint_paths(copy)))
            raise UsesearchError(
                f"{refused}; the head this index was made with is still at {original}: copy {copies}"
            ) from None

    @contextmanager
    def _its_own_weights(self):
        """Missing weights said without the hint to run another preset: an index is
        searched with the models it was built with (``query`` has no ``--preset``)."""
        try:
            yield
        except MissingWeightsError as missing:
            raise MissingWeightsError(
                f"{missing.message} This index was built with preset {self.info.preset!r}: its searches need them."
            ) from None
