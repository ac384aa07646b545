"""Files replaced whole: write a temporary file beside the target, flush it to disk,
rename it over the target. A reader, or the next run after a crash or a kill, sees
the old file or the new one, never half of one."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

# The mode a new file gets here (the process's umask read once, at import, before any
# thread could race the two calls that read it).
_UMASK = os.umask(0)
os.umask(_UMASK)
NEW_FILE_MODE = 0o666 & ~_UMASK


def write_atomic(
    path: str | os.PathLike, data: bytes | str | Callable[[Path], object], *, sync_folder: bool = False
) -> None:
    """Replace ``path`` with ``data`` (bytes, text, or a function that writes the file
    it is given: ``safetensors.save_file``, ``torch.save``). ``sync_folder``: flush the
    folder too, so that the rename itself survives a power loss. The temporary file
    never outlives a failure (a full disk leaves the old file, nothing beside it)."""
    path = Path(path)
    if is_stream(path):  # /dev/stdout and the like: written into, never renamed over
        _write_into(path, data)
        return
    if path.is_symlink():  # the file the link names is replaced; the link stays
        path = Path(os.path.realpath(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # The target's mode where it exists, else a new file's: a writer function may
        # make its file private (safetensors writes 0600), which would lock other users
        # of a shared folder out of a checkpoint.
        try:
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else NEW_FILE_MODE)
        except OSError:  # a file system without modes (vfat, some network mounts): its own rule stands
            pass
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None and os.fspath(exc.filename) == os.fspath(tmp):
            exc.filename = os.fspath(path)  # said of the file asked for, not of our temporary one beside it
        raise
    finally:
        tmp.unlink(missing_ok=True)
    if sync_folder:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")  # ``write_atomic``'s: .NAME.PID.tmp


def temporary_of(name: str) -> str | None:
    """The file a temporary file of ``write_atomic`` was to replace (None: ``name`` is
    not one): its writer's, or a killed one's."""
    found = TEMPORARY.match(name)
    return found["name"] if found else None


def remove_orphan_temporaries(folder: str | os.PathLike, ours: Callable[[str], bool]) -> list[str]:
    """Remove the temporary files in ``folder`` whose writer is no longer running (a
    kill -9 between writing and renaming leaves one, as big as the file it was to
    replace: a checkpoint, hundreds of MB), of the files ``ours`` says the folder's
    writer writes (a user's ``.notes.2024.tmp`` is not one). Only for a folder whose
    writers hold its lock (the caller does): a live writer's file is kept by its pid.
    Returns the names."""
    removed: list[str] = []
    with os.scandir(os.fspath(folder)) as entries:
        for entry in entries:
            found = TEMPORARY.match(entry.name)
            if found is None or not ours(found["name"]) or not entry.is_file(follow_symlinks=False):
                continue
            if _is_running(int(found["pid"])):
                continue
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (or no such pid number): kept
        return True
    return True


def is_stream(path: Path) -> bool:
    """A device, a FIFO, or a descriptor's name (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``): what it names may be a pipe, or a file the shell opened
    (``> out.json``, ``>> log``) that a rename would unlink from under it."""
    if not os.path.exists(path) or path.is_dir():
        return False
    if not path.is_file():
        return True
    return os.path.abspath(path).startswith(("/dev/", "/proc/"))


def is_own_stdout(path: str | os.PathLike) -> bool:
    """``path`` is this process's standard output: ``/dev/stdout``, ``/dev/fd/1``, or
    the very file or pipe it goes to."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(1))
    except OSError:
        return False


def _write_into(path: Path, data: bytes | str | Callable[[Path], object]) -> None:
    """Into a stream: through this process's own descriptor where ``path`` is its
    stdout or stderr (a second open of ``/dev/stdout`` would truncate a redirected
    file, or write at another offset than the process's prints), else appended."""
    import sys
    import tempfile

    if callable(data):  # a writer function wants a file of its own: its bytes go on
        with tempfile.TemporaryDirectory() as folder:
            staged = Path(folder) / path.name
            data(staged)
            data = staged.read_bytes()
    payload = data.encode() if isinstance(data, str) else data
    target = os.stat(path)
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            ours = os.path.samestat(target, os.fstat(fd))
        except OSError:
            ours = False
        if ours:
            stream.flush()
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            return
    with open(path, "ab" if stat.S_ISREG(target.st_mode) else "wb") as f:
        f.write(payload)


# EXIF's Software tag (0x0131) of every picture usesearch writes (contact sheets, label
# maps, overlays), in the formats that keep EXIF: an output may replace such a file, and
# never an existing one without it, which may be someone's photo (``paths.writable_file``).
SOFTWARE_TAG, PICTURE_MARK = 0x0131, "usesearch"
MARKED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")


def save_picture(image, path: str | os.PathLike, mark: bool = True, **params) -> None:
    """Pillow's ``image.save(path)`` through ``write_atomic``: a kill or a full disk
    leaves the earlier picture, not a broken one. The format is the one ``path``'s
    extension names (the temporary file's own, ``.tmp``, names none). ``mark``: said to
    be usesearch's (``PICTURE_MARK``); the demo's sample photos are photos, unmarked."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    if fmt == "PNG":  # OpenCV's default level: an audit's 960x444 sheet 0.04 s, not 0.19 s, at 17% more bytes
        params.setdefault("compress_level", 1)
    if mark and fmt in MARKED_FORMATS:
        exif = Image.Exif()
        exif[SOFTWARE_TAG] = PICTURE_MARK
        params.setdefault("exif", exif.tobytes())
    write_atomic(path, lambda target: image.save(target, fmt, **params))


def written_by_usesearch(path: str | os.PathLike) -> bool:
    """Whether the regular file at ``path`` is a picture usesearch wrote (``save_picture``'s
    mark); False for anything else, a photo, a file Pillow cannot read, a FIFO. Read from
    the file's header: ``getexif`` decodes a whole PNG that has no EXIF before its pixels
    (0.43 s at 48 MP), and warns of a decompression bomb past 89 MP."""
    if not os.path.isfile(path):
        return False
    return _marked(path)


def bytes_written_by_usesearch(data: bytes) -> bool:
    """``written_by_usesearch`` of a file's bytes, read already (the indexer's)."""
    import io

    return _marked(io.BytesIO(data))


def _marked(source) -> bool:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as picture:
                if picture.format == "TIFF":  # its tags are its header
                    return picture.getexif().get(SOFTWARE_TAG) == PICTURE_MARK
                raw = picture.info.get("exif")  # (PNG's eXIf chunk before its pixels, JPEG's APP1, WebP's)
                if not raw:
                    return False
                exif = Image.Exif()
                exif.load(raw)
                return exif.get(SOFTWARE_TAG) == PICTURE_MARK
    except Exception:  # noqa: BLE001 - unreadable, a decompression bomb, not a picture: not ours
        return False
