"""A label map's numbers, apart from the models (the class lists' checks import no torch):
uint8 with 255 unlabelled up to 254 classes, uint16 with 65535 past them."""

from __future__ import annotations

import numpy as np

UNLABELLED = 255  # in uint8 label maps
UNLABELLED_16 = 65535  # in uint16 label maps (256 classes or more)


def label_dtype(num_classes: int) -> tuple[type[np.unsignedinteger], int]:
    """(dtype, unlabelled value) of a label map for this many classes."""
    if num_classes < UNLABELLED:
        return np.uint8, UNLABELLED
    if num_classes < UNLABELLED_16:
        return np.uint16, UNLABELLED_16
    raise ValueError(f"{num_classes} classes do not fit a 16-bit label map")
