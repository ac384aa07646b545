"""SAM's mask generator's image-encoder side (``SamEncoding``, a base of
``SamMaskGenerator``): each photo's crops through the image encoder ``encoder_batch``
at a time, NaN features checked (a compiled encoder's rerun eagerly), and on a GPU a
group encoded ahead, on a stream of its own, while the model thread decodes the group
before it (``usesearch/side_stream.py``)."""

from __future__ import annotations

import time

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import batch_iterator, generate_crop_boxes
from segment_anything.utils.transforms import ResizeLongestSide

from usesearch.devices import synchronize
from usesearch.errors import model_output_error
from usesearch.masks.sam_compile import rerun_uncompiled, run_or_uncompile
from usesearch.side_stream import SideStream


class SamEncoding:
    """The generator sets these (``SamMaskGenerator.__init__``)."""

    model: Sam
    transform: ResizeLongestSide
    crop_n_layers: int
    crop_overlap_ratio: float
    encoder_batch: int
    seconds: dict[str, float]
    ahead: SideStream[dict]
    autocast: bool

    def _sync(self) -> None:
        synchronize(self.model.device)  # its GPU's (--device cuda:1), its stream's alone

    def _nan(self, what: str, compiled: bool) -> Exception:
        return model_output_error(what, "bfloat16" if self.autocast else "float32", compiled)

    def _autocast(self):
        return torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def encode_ahead(self, images: list[np.ndarray]) -> None:
        """On a GPU (``ahead.on``), start encoding these photos on a stream of their own
        while the model thread decodes the group before them (the indexer's
        ``ModelStage`` calls it as it queues a group); ``generate_batch`` given the same
        photo objects takes the features. Elsewhere nothing."""
        self.ahead.start(images, self._encoded_ahead)

    def _encoded_ahead(self, images: list[np.ndarray]) -> dict[int, list]:
        with torch.no_grad():  # (grad mode is the thread's own)
            return self._encode_photos(images, None)

    def _encode_photos(self, images: list[np.ndarray], clock: str | None) -> dict[int, list]:
        """Each photo's crops' (box, layer, features, input size), the crops through the
        encoder ``encoder_batch`` at a time."""
        jobs = []  # (photo, crop box, layer) for every crop of every photo
        for n, image in enumerate(images):
            boxes, layers = generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio)
            jobs += [(n, box, layer) for box, layer in zip(boxes, layers)]
        features: dict[int, list] = {n: [] for n in range(len(images))}
        for chunk in batch_iterator(self.encoder_batch, jobs):
            (chunk,) = chunk
            encoded = self._encode([images[n][box[1] : box[3], box[0] : box[2], :] for n, box, _ in chunk], clock)
            for (n, box, layer), (feats, input_size) in zip(chunk, encoded):
                features[n].append((box, layer, feats, input_size))
        return features

    def _encode(self, crops: list[np.ndarray], clock: str | None) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """``SamPredictor.set_image`` for several crops in one encoder call: each
        resized to the long side, normalised and padded by the model's own helpers.
        ``clock``: the ``seconds`` entry it adds to (None: the side stream keeps its own)."""
        start = time.perf_counter()
        inputs, sizes = [], []
        for crop in crops:
            resized = torch.as_tensor(self.transform.apply_image(crop), device=self.model.device)
            resized = resized.permute(2, 0, 1).contiguous()[None]
            sizes.append((resized.shape[-2], resized.shape[-1]))
            inputs.append(self.model.preprocess(resized))
        pixels = torch.cat(inputs)
        features = run_or_uncompile(self.model.image_encoder, lambda: self._features(pixels), "SAM's image encoder")
        if not _finite(features):  # else every mask comes out empty, and the photo "has none"
            said = "SAM's image encoder gave NaN or infinite numbers compiled: it runs uncompiled"
            again = rerun_uncompiled(self.model.image_encoder, lambda: self._features(pixels), _finite, said)
            if again is None:
                raise self._nan("SAM's image encoder gave", compiled=False)
            features = again
        if clock is not None:
            self.seconds[clock] += time.perf_counter() - start
        return [(features[i : i + 1], sizes[i]) for i in range(len(crops))]

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            features = self.model.image_encoder(pixels)
        self._sync()
        return features


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())
