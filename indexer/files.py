"""Finding image files and reading them safely."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from usesearch.images import ImageReadError, read_image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP; larger is refused from the header, before decoding


@dataclass(frozen=True)
class Found:
    path: str  # display form: valid UTF-8 even for file names that are not
    fs_path: str  # what the OS opens
    error: OSError | None = None  # a folder that could not be listed


def display_path(fs_path: str) -> str:
    return os.fsencode(fs_path).decode("utf-8", "backslashreplace")


def walk(paths: list[str | os.PathLike]) -> Iterator[Found]:
    """Files with image suffixes under ``paths``, depth first in sorted order.
    Symlinked folders are followed once each, so a symlink loop ends."""
    seen_dirs: set[tuple[int, int]] = set()

    def visit(path: str) -> Iterator[Found]:
        try:
            st = os.stat(path)
        except OSError as exc:
            yield Found(display_path(path), path, exc)
            return
        if not os.path.isdir(path):
            yield Found(display_path(path), path)
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return
        seen_dirs.add(key)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Found(display_path(path), path, exc)
            return
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                yield from visit(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                yield Found(display_path(entry.path), entry.path)

    for root in paths:
        yield from visit(os.path.abspath(os.fspath(root)))


def read_bytes(fs_path: str) -> tuple[bytes, str]:
    with open(fs_path, "rb") as f:
        data = f.read()
    return data, hashlib.sha256(data).hexdigest()


def decode(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes -> RGB uint8 with EXIF orientation applied. Pixel count is checked from
    the header first, so a decompression bomb is refused without decoding it."""
    if not data:
        raise ImageReadError(f"cannot read image {name}: file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"cannot read image {name}: not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {name}: {exc}") from exc
    if w * h > max_pixels:
        raise ImageReadError(f"cannot read image {name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            rgb = read_image(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    return rgb
