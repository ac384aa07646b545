"""Image inputs: anything image-like to RGB uint8, read safely (no torch here: every command line imports this)."""

from __future__ import annotations

import os
import stat
import warnings
from os import PathLike
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from usesearch.errors import BadArgumentError, ImageReadError

# A photo's damaged EXIF block (its orientation then read as none): Pillow warns with
# its own source lines and no file name, a wall of them over an archive of such
# photos. The photo is read all the same; process-wide, as warnings filters are (a
# catch_warnings per read would race the read-ahead threads).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")


def read_image(path: str | PathLike | BinaryIO, name: str | None = None) -> np.ndarray:
    """Open any format Pillow reads (first frame of a GIF), apply EXIF orientation so
    masks line up with what viewers show, and return RGB uint8 HxWx3. ``name`` is what
    errors call the image (for a file object, whose repr means nothing to a user)."""
    try:
        with Image.open(path) as opened:
            opened.seek(0)
            return to_rgb_array(ImageOps.exif_transpose(opened))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow signals truncated/corrupt files with any of these.
        raise ImageReadError(f"cannot read image {name or path}: {exc}") from exc


def displayed_size(path: str | PathLike) -> tuple[int, int]:
    """(height, width) of a photo as it is read (an EXIF quarter turn applied), from its
    header alone; a FIFO or device is refused, not waited on."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ImageReadError(f"cannot read image {os.fspath(path)}: not a regular file")
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if opened.getexif().get(0x0112) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {os.fspath(path)}: {exc}") from exc
    return height, width


def to_rgb_array(image: Image.Image | np.ndarray | str | PathLike) -> np.ndarray:
    """Any photo as RGB uint8 HxWx3, the same pixels whichever way it comes (a file's
    path, read by ``read_image``; a PIL image, an array): 16-bit greyscale scaled from the bits its pixels use to 8
    bits (a 12-bit scan's 0..4095 by 16), not clipped at 255 (a
    PIL image given to the API was clipped, so its own segment was not its best match);
    transparency composited on white, also in an RGBA array (whose alpha was dropped)."""
    if isinstance(image, (str, PathLike)):  # (a path was an array of shape (): "expected an HxWx3 image")
        return read_image(image)
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 1:  # greyscale HxWx1: as HxW
        image = image[..., 0]
    if isinstance(image, np.ndarray) and image.ndim == 2 and image.dtype == np.uint16 and image.size:
        image = Image.fromarray(np.ascontiguousarray(image))  # scaled as the same pixels read from a file are
    if (
        isinstance(image, np.ndarray)
        and image.ndim == 3
        and image.shape[2] == 4
        and image.dtype == np.uint8
        and image.size
    ):
        image = Image.fromarray(np.ascontiguousarray(image), "RGBA")
    if isinstance(image, Image.Image):
        if image.mode == "F":  # floats: PIL's convert clips them, and 0..1 pixels became black without a word
            raise BadArgumentError("expected 8-bit pixels, got a float image (PIL mode F): convert it to uint8 pixels")
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            deep = np.clip(np.asarray(image, dtype=np.int64), 0, None)  # mode "I" is signed 32-bit
            top = int(deep.max()) if deep.size else 0
            # To the bits the pixels use (12-bit data in a 16-bit file was read nearly black, and
            # one pixel past 255 blacked out 8-bit data so stored); never wraps past 255.
            shift = max(0, top.bit_length() - 8)
            image = Image.fromarray((deep >> shift).astype(np.uint8))
        if image.mode != "RGB":
            # Composite transparency on white rather than letting it turn black.
            if image.mode in ("RGBA", "LA", "P", "PA"):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            image = image.convert("RGB")
        array = np.asarray(image, dtype=np.uint8).copy()
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise BadArgumentError(f"the image is empty ({image.width}x{image.height} pixels)")
        return array
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise BadArgumentError(f"expected an HxWx3 image, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise BadArgumentError(f"expected a uint8 image, got {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise BadArgumentError(f"the image is empty ({array.shape[1]}x{array.shape[0]} pixels)")
    return np.ascontiguousarray(array[..., :3])
