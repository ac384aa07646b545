"""Finding image files and reading them safely.

Only regular files are opened (a FIFO, a device or a socket named ``x.jpg`` is
refused without blocking), at most ``max_bytes`` of them, and the walk never leaves
the folders the user named, whatever symlinks say.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from usesearch.errors import ImageReadError, UsesearchError
from usesearch.io.images import read_image
from usesearch.io.own_folders import pictures_of

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP; larger is refused from the header, before decoding
DEFAULT_MAX_BYTES = 512 * 2**20  # larger files are refused before reading them
PAST_LIMIT = "exceeds the limit of"  # in a refusal for size: what `index` names its options after
# The most bytes a file holding an image of N pixels needs: 16-bit RGBA uncompressed is 8 a pixel,
# and headers, EXIF and ICC profiles fit in the margin.
BYTES_PER_PIXEL_AT_MOST, FILE_MARGIN = 8, 64 * 2**20


@dataclass(frozen=True, slots=True)  # slots: a walk of 10^7 photos holds 10^7 of these
class Found:
    path: str  # display form: valid UTF-8 even for file names that are not
    fs_path: str  # what the OS opens
    error: OSError | ImageReadError | None = None  # a folder that could not be listed, a broken link

    @property
    def key(self) -> bytes:
        """The exact path bytes: the store's key for this file."""
        return os.fsencode(self.fs_path)


def stat_signature(st: os.stat_result) -> str:
    """A file as its metadata says it is: size, modification and change times, inode.
    A file replaced by one of the same size with its mtime kept (``cp -p``, ``rsync -t``)
    still has a new ctime, so another signature."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def display_path(fs_path: str) -> str:
    shown = os.fsencode(fs_path).decode("utf-8", "backslashreplace")
    return fs_path if shown == fs_path else shown  # one string, not two equal ones, for most names


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def one_line(text: str) -> str:
    """``text`` with its control characters spelt out (a newline as ``\\n``): a name
    printed in a line of tab-separated output stays one line, its fields in place. A
    file name's bytes that are not UTF-8 (carried as surrogates) are spelt ``\\xff``
    too, as ``display_path`` spells them, not written raw to the terminal."""
    text = text.translate(_CONTROL)
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name's byte gives
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def holds_anything(folder: str | os.PathLike) -> bool | None:
    """Whether ``folder`` has an entry, from its listing's first (a folder of a million
    photos costs one read); None where it cannot be listed (missing, a file, unreadable)."""
    try:
        with os.scandir(os.fspath(folder)) as entries:
            return next(entries, None) is not None
    except OSError:
        return None


def photos_under(paths: list[str | os.PathLike], refuse_none: bool = True) -> list[Found]:
    """``walk``'s files, refused in one line when there is none and ``refuse_none`` (a
    new index: a wrong folder, or a disk not mounted, would make an empty index bound
    to the run's model; an existing one's folders may have been emptied, for a prune)."""
    files = list(walk(paths))
    if not paths and refuse_none:
        raise UsesearchError("no photos given: name the folders or files to index")
    if not files and refuse_none:
        kinds = ", ".join(sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES))
        raise UsesearchError(f"no photo under {', '.join(map(str, paths))} (index reads {kinds})")
    return files


def walk(paths: list[str | os.PathLike]) -> Iterator[Found]:
    """Files with image suffixes under ``paths``, depth first in sorted order.
    Symlinked folders are followed once each (so a symlink loop ends) and only
    when they lead to a folder inside one of ``paths`` (the others said once in the log,
    with the first). What usesearch wrote under them
    (``own_folders.pictures_of``: an index's folder, whose subfolders are still walked, an
    audit report) is left out, said once in the log: its pictures are not photos."""
    seen_dirs: set[tuple[int, int]] = set()
    roots = [os.path.realpath(os.fspath(p)) for p in paths]

    def inside_roots(folder: str) -> bool:
        real = os.path.realpath(folder)
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)

    def visit(path: str) -> Iterator[Found]:
        try:
            st = os.stat(path)
        except OSError as exc:
            yield Found(display_path(path), path, _said(path, exc))
            return
        if not os.path.isdir(path):
            yield from once(path)
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
        kind = None if path in starts else pictures_of(entry.name for entry in entries)
        if kind is not None:
            # An index's own pictures are left out, not the photo folders under it (an index
            # made at the top of a photo tree); an audit report holds nothing else.
            left_out = "its pictures" if kind == "an index" else "its files"
            log.warning("%s holds %s, not photos: %s left out", display_path(path), kind, left_out)
            if kind != "an index":
                return
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if not entry.is_symlink() or inside_roots(entry.path):
                    yield from visit(entry.path)
                else:
                    outside.append(entry.path)
            elif kind is None and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                yield from once(entry.path)

    seen_files: set[str] = set()

    def once(path: str) -> Iterator[Found]:
        """A file met again by the same path (named, and under a folder named too) is the
        same photo, not its copy ("skipped as a copy of a photo indexed under another
        path", naming itself); another path to the same file (a hard link) is one."""
        if path not in seen_files:
            seen_files.add(path)
            yield Found(display_path(path), path)

    starts = {os.path.abspath(os.fspath(root)) for root in paths}  # named by the caller: never left out
    outside: list[str] = []  # symlinked folders leading elsewhere: said once (photos on another disk went unsaid)
    for root in paths:
        yield from visit(os.path.abspath(os.fspath(root)))
    if outside:
        first = f"{display_path(outside[0])} -> {display_path(os.path.realpath(outside[0]))}"
        log.warning(
            "%d symlinked folder(s) lead outside the folders named, not followed: %s%s; name them to index them",
            len(outside),
            first,
            ", ..." if len(outside) > 1 else "",
        )


def _said(path: str, exc: OSError) -> OSError | ImageReadError:
    """A broken link's failure in words ("[Errno 2] No such file or directory" named the
    link, which is there: the file it names is not)."""
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        target = os.readlink(path)
        return ImageReadError(f"cannot read image {display_path(path)}: a link to {target}, which does not exist")
    return exc


def read_bytes(fs_path: str | bytes, max_bytes: int | None = None, name: str | None = None) -> tuple[bytes, str]:
    """The file's bytes and SHA-256. Opened non-blocking and checked with fstat, so a
    FIFO or device swapped in under an image's name is refused at once, never read.
    ``max_bytes``: None for ``DEFAULT_MAX_BYTES`` (each default read when called)."""
    name = name or display_path(os.fsdecode(fs_path))
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    try:
        fd = os.open(fs_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise _said(os.fsdecode(fs_path), exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(f"cannot read image {name}: not a regular file")
        if st.st_size > max_bytes:
            raise ImageReadError(f"cannot read image {name}: {st.st_size} bytes {PAST_LIMIT} {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            # The size fstat gave, and one byte more to see a file still growing: read(max_bytes)
            # allocated all of a raised --max-bytes up front, for every photo.
            data = f.read(st.st_size + 1)
    finally:
        os.close(fd)
    if len(data) > st.st_size:
        raise ImageReadError(f"cannot read image {name}: it grew while read (still being written?)")
    return data, hashlib.sha256(data).hexdigest()


def read_photo(
    path: str | os.PathLike,
    name: str | None = None,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
):
    """One image file -> RGB, with the indexer's safeguards (a regular file, its size,
    no decompression bomb): a FIFO named as the photo is refused, never waited on."""
    name = name or display_path(os.fspath(path))
    return decode(read_bytes(os.fspath(path), max_bytes, name)[0], name, max_pixels)


def indexed_limits(width: int | None, height: int | None, file_size: int | None = None) -> tuple[int, int]:
    """``(max_bytes, max_pixels)`` to read again a photo indexed (or curated) at ``width`` x ``height``
    (from a file of ``file_size`` bytes, where known): the defaults, or room for the photo
    itself where ``index --max-pixels`` let a larger one in (else the server, ``--show``
    and exports could never draw it). Its SHA-256 and size are checked after the read:
    another file under its name is still refused."""
    pixels = (width or 0) * (height or 0)
    max_bytes = max(DEFAULT_MAX_BYTES, BYTES_PER_PIXEL_AT_MOST * pixels + FILE_MARGIN, file_size or 0)
    return max_bytes, max(DEFAULT_MAX_PIXELS, pixels)


_PIL_LIMIT = threading.Lock()
PIL_DEFAULT_LIMIT = Image.MAX_IMAGE_PIXELS  # PIL's own bomb check: a warning past it, an error past twice it
# Our ``max_pixels``, checked from the header before any decode, does the warning's job.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def pixels_refused(reason: str | None) -> int | None:
    """The pixel count a refusal by ``pixel_count`` for pixels names (else None): a
    re-run whose ``max_pixels`` now lets that many in reads the photo again."""
    found = re.search(rf"= (\d+) pixels {PAST_LIMIT} \d+", reason or "")
    return int(found.group(1)) if found else None


@contextmanager
def pil_limit_at_least(pixels: int | None) -> Iterator[None]:
    """PIL's limit raised to ``pixels`` (None: off) for the body, where it is below.
    It is process-wide state, so one such body at a time; a photo opened meanwhile
    within PIL's default limit is unaffected (the limit only ever rises)."""
    if PIL_DEFAULT_LIMIT is None or (pixels is not None and pixels <= PIL_DEFAULT_LIMIT):
        yield
        return
    with _PIL_LIMIT:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header. Past twice PIL's limit (179 MP) PIL refuses to
    say; ``--max-pixels`` may let in more, so the header is read again with PIL's check
    off, and the caller's limit decides."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError:
        with pil_limit_at_least(None), Image.open(io.BytesIO(data)) as im:
            return im.size


def pixel_count(data: bytes, name: str, max_pixels: int | None = None) -> int:
    """The photo's width x height from its header (nothing decoded); the same one-line
    errors as ``decode`` for what is not an image or past ``max_pixels`` (None:
    ``DEFAULT_MAX_PIXELS``)."""
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise ImageReadError(f"cannot read image {name}: file is empty")
    try:
        w, h = _header_size(data)
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"cannot read image {name}: not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {name}: {exc}") from exc
    if w * h > max_pixels:
        raise ImageReadError(f"cannot read image {name}: {w}x{h} = {w * h} pixels {PAST_LIMIT} {max_pixels}")
    return w * h


def refuse_own_picture(data: bytes, name: str, use: str = "index") -> None:
    """A picture usesearch wrote (``save_picture``'s mark: a contact sheet, an overlay, a
    label map) met among the photos an index walks (``use``: or that ``curate`` reads):
    refused as a photo, recorded as any failure is, so an index's re-run skips it unread.
    ``segment --out`` and ``curate show --out`` know no index, and wrote theirs into its
    folders, indexed the next run (and curated: masks and texts drawn on, trained on)."""
    from usesearch.io.atomic import bytes_written_by_usesearch

    if bytes_written_by_usesearch(data):
        raise own_picture_error(name, use, f"write such pictures outside the folders you {use}")


def own_picture_error(name: str, use: str, remedy: str) -> ImageReadError:
    """``refuse_own_picture``'s refusal, for a command that reads one picture (``segment``:
    its output given as its input, its arguments swapped), ``remedy`` its own."""
    return ImageReadError(
        f"cannot {use} {name}: a picture usesearch wrote (a contact sheet, overlay or label map), not a photo; {remedy}"
    )


def decode(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Bytes -> RGB uint8 with EXIF orientation applied. Pixel count is checked from
    the header first, so a decompression bomb is refused without decoding it. Within
    PIL's own limit photos decode in parallel threads (the indexer's read-ahead pool);
    past it, one at a time (``pil_limit_at_least``)."""
    pixels = pixel_count(data, name, max_pixels)
    with pil_limit_at_least(pixels):
        return read_image(io.BytesIO(data), name=name)
