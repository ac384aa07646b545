"""Pictures the web app serves: segment tiles, mask overlays, masks and thumbnails.

Every picture starts from an image *record* of the store, never from a path a
request names: the store's path is the only file the server will open.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future

import numpy as np
from PIL import Image

from usesearch.errors import ImageGoneError, UsesearchError
from usesearch.io.files import decode, read_bytes
from usesearch.tasks.visualize import OUTLINE, TINT, decode_mask, outline, segment_tile

from ..known_images import record_limits
from ..records import ImageRecord, SegmentRow
from .budget import PixelBudget


class ImageCache:
    """The last few decoded images: a results page asks for many tiles of few images.

    Bounded in bytes, since one 24-megapixel photo decodes to 72 MB. Each image is
    decoded once however many requests wait for it (the others wait for that
    decode), and decodes hold the server's one pixel ``budget`` (region uploads draw
    on it too), so a burst of tile requests for huge photos cannot multiply the
    decode memory."""

    def __init__(self, max_bytes: int = 512 * 2**20, budget: PixelBudget | None = None):
        self.max_bytes = max_bytes
        self._images: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, str], Future] = {}  # decodes in progress, for the requests that wait
        self._seen: dict[tuple[int, str], tuple[int, int, int] | None] = {}  # each file's state when decoded
        self.budget = budget or PixelBudget()
        self.decoded = 0  # decodes done: how many times a file was read and decoded

    def rgb(self, record: ImageRecord) -> np.ndarray:
        key = (record.id, record.sha256 or "")
        seen = _file_state(record)  # a photo moved or rewritten since it was decoded is read again
        with self._lock:
            if key in self._images:
                if seen is not None and self._seen.get(key) == seen:
                    self._images.move_to_end(key)
                    return self._images[key]
                del self._images[key]
            pending = self._pending.get(key)
            if pending is None:  # this request decodes; the others wait for its result
                pending = self._pending[key] = Future()
                decoding = True
            else:
                decoding = False
        if not decoding:
            return pending.result()  # the decoded image, or the decode's ImageGoneError
        try:
            # A photo indexed past the budget (`index --max-pixels`) takes all of it, alone.
            with self.budget.hold((record.width or 1) * (record.height or 1), larger_alone=True):
                rgb = self._decode(record)
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        else:
            pending.set_result(rgb)
            with self._lock:
                self._images[key], self._seen[key] = rgb, seen
                while len(self._images) > 1 and sum(a.nbytes for a in self._images.values()) > self.max_bytes:
                    self._seen.pop(self._images.popitem(last=False)[0], None)
            return rgb
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _decode(self, record: ImageRecord) -> np.ndarray:
        self.decoded += 1
        changed = f"image {record.id} changed on disk since it was indexed; run `usesearch index` again"
        try:
            # read_bytes opens non-blocking and refuses anything but a regular file,
            # so a FIFO swapped in under an indexed name never holds a worker.
            max_bytes, max_pixels = record_limits(record)
            data, sha256 = read_bytes(record.fs_path, max_bytes, record.path)
            if sha256 != record.sha256:  # before decoding: the budget held is for the indexed photo's pixels
                raise ImageGoneError(changed)
            rgb = decode(data, record.path, max_pixels)
        except ImageGoneError:
            raise
        except (OSError, UsesearchError) as exc:
            # An OSError's own text shows the bytes path as b'...': its reason, with the path as indexed
            reason = f"{record.path}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
            gone = f"image {record.id} can no longer be read from where it was indexed: {reason}"
            raise ImageGoneError(gone) from exc
        if rgb.shape[:2] != (record.height, record.width):
            raise ImageGoneError(changed)
        return rgb


def _file_state(record: ImageRecord) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a record's file now; None when it cannot be reached."""
    try:
        st = os.stat(record.fs_path)
    except (OSError, ValueError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over bytes: served on a LAN
    return buffer.getvalue()


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def row_mask(row: SegmentRow) -> np.ndarray:
    return decode_mask({"size": list(row.image_hw), "counts": row.rle_counts})


def tile(rgb: np.ndarray, row: SegmentRow, size: int) -> bytes:
    return png(segment_tile(rgb, row_mask(row), row.bbox, size))


def mask_png(mask: np.ndarray) -> bytes:
    """A full-resolution bool mask as an 8-bit PNG: 255 inside, 0 outside."""
    return png(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"))


def display_size(hw: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) of an image shrunk (never enlarged) to ``longest`` pixels on its long side."""
    h, w = hw
    scale = min(1.0, longest / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def thumbnail(rgb: np.ndarray, longest: int) -> bytes:
    image = Image.fromarray(rgb)
    size = display_size(rgb.shape[:2], longest)
    return jpeg(image if size == image.size else image.resize(size, Image.Resampling.LANCZOS))


def overlay(row: SegmentRow, longest: int) -> bytes:
    """A transparent RGBA layer the size of the image's thumbnail: the mask tinted and
    outlined, to lay over ``thumbnail(..., longest)`` in the browser."""
    size = display_size(row.image_hw, longest)
    mask = np.asarray(Image.fromarray(row_mask(row)).resize(size, Image.Resampling.NEAREST))
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = (*TINT, 110)
    layer[outline(mask)] = (*OUTLINE, 255)
    return png(Image.fromarray(layer, mode="RGBA"))


def region_overlay_data_url(rgb: np.ndarray, mask: np.ndarray, longest: int = 768) -> str:
    """An uploaded photo with the searched region tinted and outlined, as a PNG data
    URL: the page shows it without the photo ever being stored."""
    import base64

    size = display_size(rgb.shape[:2], longest)
    picture = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS)).astype(np.float32)
    small = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    picture[small] = 0.6 * picture[small] + 0.4 * np.array(TINT, np.float32)
    picture[outline(small)] = OUTLINE
    return "data:image/png;base64," + base64.b64encode(png(Image.fromarray(picture.astype(np.uint8)))).decode()
