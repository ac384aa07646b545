"""Paths a command writes, checked as it starts: a file that can be written, a picture
file Pillow can write, a folder (made when missing) that holds no other command's
files. Typer callbacks; ``options`` re-exports them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import typer

from usesearch.errors import UsesearchError
from usesearch.io.atomic import is_stream
from usesearch.io.files import IMAGE_SUFFIXES
from usesearch.io.own_folders import (
    OUTPUT_MARKS,
    audit_report_written,
    holding_folder,
    index_holding,
    not_a_reports,
    pictures_of,
    why_unwritable,
)
from usesearch.models.presets import PRESETS


def writable_file(value: Path | None) -> Path | None:
    """A file to be written: its folder must exist and take writes, checked before any
    work (a model run whose result cannot be written is time lost)."""
    if value is not None and str(value) == "-":  # a file named "-" is never what was meant
        raise typer.BadParameter("'-' is not read as standard output here: standard output is /dev/stdout")
    if value is not None and not is_stream(value):  # /dev/stdout: written into, as it is
        if value.is_dir():
            raise typer.BadParameter(f"{value} is a folder: name a file")
        # A link's file is replaced where it lies (``write_atomic``): its folder is the one written.
        folder = Path(os.path.realpath(value)).parent if value.is_symlink() else value.parent
        if folder.exists() and not folder.is_dir():  # (it said "folder photos/coffee.jpg does not exist")
            raise typer.BadParameter(f"{folder} is a file, not a folder: write elsewhere")
        if not folder.is_dir():
            raise typer.BadParameter(f"folder {folder} does not exist: make it first, or write elsewhere")
        if not os.access(folder, os.W_OK):
            raise typer.BadParameter(f"folder {folder} cannot be written to")
        refuse_into_own_folder(value)
        refuse_replacing_a_photo(value)
    return value


def refuse_replacing_a_photo(value: Path, flag: str | None = None) -> None:
    """An existing picture that usesearch did not write (``atomic.written_by_usesearch``)
    may be a photo, of another index, of the demo, of no index yet: never replaced by a
    sheet or a label map (`--show b/chelsea.jpg` drew the sheet over a photo another
    index holds, which its next run then indexed as the photo). Ours are replaced, as a
    query re-run with the same ``--show`` expects."""
    from PIL import Image

    from usesearch.io.atomic import written_by_usesearch

    picture = value.suffix.lower() in IMAGE_SUFFIXES or value.suffix.lower() in Image.registered_extensions()
    # (an empty file, made by mktemp or touch for the output to come, holds nothing to lose)
    if picture and value.is_file() and value.stat().st_size and not written_by_usesearch(value):
        named = f"{flag} {value}" if flag else str(value)
        message = (
            f"{named} exists and is no picture usesearch wrote (a photo?): it would be replaced; "
            "remove it first, or write elsewhere"
        )
        raise typer.BadParameter(message) if flag is None else UsesearchError(message)


def refuse_into_own_folder(value: Path) -> None:
    """A file written into a folder usesearch writes (an index, a curated dataset, a
    training run, an audit report; at any depth, links followed) could replace or be
    read as one of its files: refused, whatever its name. One exception, as the photo
    walk expects it: a picture saved into an index's folder itself (``--show``), never
    one of its files."""
    held = holding_folder(value) or _demo_holding(value)
    if held is None:
        return
    kind, folder = held
    real = Path(os.path.realpath(value))
    if kind == "an index" and str(real.parent) == folder and real.suffix.lower() in IMAGE_SUFFIXES:
        return
    raise typer.BadParameter(f"{value} lies in {kind} ({folder}), whose files usesearch writes: write elsewhere")


def _demo_holding(value: Path) -> tuple[str, str] | None:
    """The demo's folder (``usesearch demo``: its index beside its sample photos) that
    ``value`` lies in, at any depth, or None: a picture written among its photos was
    indexed by the next demo. Known by both, not by a ``db-b16`` alone, a name anyone's
    index may have."""
    real = Path(os.path.realpath(value))
    for folder in real.parents:
        if all((folder / "photos" / f"{name}.jpg").is_file() for name in DEMO_SAMPLES[-2:]) and any(
            (folder / index / "segments.sqlite").is_file() for index in FOLDER_MARKS["the demo"]
        ):
            return "the demo", str(folder)
    return None


RESULT_READ = 1 << 24  # an evaluation's result is kilobytes: a larger file is none of ours


def result_file(value: Path | None) -> Path | None:
    """An evaluation's result file (``eval ... --out``): an existing file that is no result
    usesearch wrote (JSON with the model and its score) is refused, as a picture is: any
    file given there, another tool's JSON, a list of classes, was replaced without a word."""
    import json

    value = writable_file(value)
    if value is not None and not is_stream(value) and value.is_file() and value.stat().st_size:
        try:
            with open(value, "rb") as f:
                held = json.loads(f.read(RESULT_READ + 1)) if value.stat().st_size <= RESULT_READ else None
        except (OSError, ValueError):
            held = None
        if not (isinstance(held, dict) and "model" in held and ("mIoU" in held or "mAP" in held)):
            raise typer.BadParameter(
                f"{value} exists and is no result usesearch wrote: it would be replaced; remove it first, or write "
                "elsewhere"
            )
    return value


EXPORT_END = b'"supercategory": "query"}]}'  # how every export usesearch writes ends (``hits_to_coco``)


def json_file(value: Path | None) -> Path | None:
    """A JSON file to be written (``--export-coco``): a picture's name is refused, as a
    typo that would replace a photo with JSON, and so is an existing file that is no
    export usesearch wrote (the COCO file the index was built from was replaced, as any
    other JSON or text file given there); an empty one is taken."""
    if value is not None and not is_stream(value) and value.suffix.lower() in IMAGE_SUFFIXES:
        raise typer.BadParameter(f"{value} names a picture: name a .json file")
    value = writable_file(value)
    if value is not None and not is_stream(value) and value.is_file() and value.stat().st_size:
        try:
            with open(value, "rb") as f:
                f.seek(max(0, value.stat().st_size - 256))
                ours = EXPORT_END in f.read()
        except OSError:
            ours = False
        if not ours:
            raise typer.BadParameter(
                f"{value} exists and is no export usesearch wrote: it would be replaced; remove it first, or write "
                "elsewhere"
            )
    return value


def picture_file(value: Path | None) -> Path | None:
    """A picture to be written (``--show``, ``--overlay``): a writable file in a format
    that carries usesearch's mark (``atomic.MARKED_FORMATS``: a GIF or BMP written once
    could never be replaced by a re-run), checked before any work."""
    from PIL import Image

    from usesearch.io.atomic import MARKED_FORMATS

    if value is not None:
        if value.is_dir():
            raise typer.BadParameter(f"{value} is a folder: name a picture file (.png, .jpg, .webp, .tiff)")
        if Image.registered_extensions().get(value.suffix.lower()) not in MARKED_FORMATS:
            raise typer.BadParameter(f"{value}: name a picture file (.png, .jpg, .webp, .tiff)")
    return writable_file(value)


def folder_to_write(value: Path | None) -> Path | None:
    """A folder a command writes into (made when missing): a file by that name is
    refused as the command starts, not when its first write fails after the work."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file: name a folder (it is made when missing)")
    refused = why_unwritable(value) if value is not None else None
    if refused is not None:
        there, why = refused
        made = "" if there == os.path.abspath(value) else f", where {value} would be made"  # type: ignore[arg-type]
        raise typer.BadParameter(f"{there} {why}{made}: give a folder this command can write")
    return value


DEMO_INDEX = "db-{preset}"  # the demo's index, in its folder beside the sample photos
# scikit-image's photos (all shipped in its wheel: no download) that the demo writes into
# its folder's photos/, as NAME.jpg.
DEMO_SAMPLES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "coins",
)

# What each command's folder holds, by the files that only it writes.
FOLDER_MARKS = {**OUTPUT_MARKS, "the demo": tuple(DEMO_INDEX.format(preset=name) for name in PRESETS)}
PICTURES_WRITTEN = ("an audit report", "the demo")  # their pictures would be indexed with photos they lay among


def folder_for(kind: str) -> Callable[[Path | None], Path | None]:
    """A ``folder_to_write`` for ``kind`` (a key of ``FOLDER_MARKS``) that also refuses a
    folder holding another kind: their files would mix, and each reader would then
    find the other's (an index in a dataset, a training run in an index)."""

    def check(value: Path | None) -> Path | None:
        folder_to_write(value)
        # Inside another's folder (`train DS --run-dir DS/run`): that folder's command may
        # walk or replace what it finds there. A report's place in an index is audit's call.
        held = holding_folder(value) if value is not None and kind != "an audit report" else None
        if held is not None:
            raise typer.BadParameter(
                f"{value} lies in {held[0]} ({held[1]}), whose files usesearch writes: give {kind} a folder of its own"
            )
        if value is not None and value.is_dir():
            try:
                refuse_other_kind(value, kind)
            except UsesearchError as exc:
                raise typer.BadParameter(str(exc)) from None
        return value

    return check


def refuse_report_in_an_index(folder: Path, audited: str | os.PathLike | None = None) -> None:
    """An audit report's folder inside an index (its ``audit/report``, any depth) other
    than the ``audited`` one: `eval audit --report-dir DB/audit/report` mixed another
    dataset's suspects into that index's own lists."""
    index = index_holding(folder)
    if index is not None and (audited is None or Path(index) != Path(os.path.realpath(audited))):
        raise UsesearchError(
            f"--report-dir {folder} lies in an index ({index}), whose files usesearch writes: "
            + ("only `usesearch audit` of that index writes its report there; " if audited is None else "")
            + "give the report a folder of its own"
        )


def refuse_other_kind(folder: str | os.PathLike, kind: str) -> None:
    """Refuses a folder holding another kind's files; for a kind that writes pictures,
    also one holding anything but its own (photos among them would be indexed with
    its pictures, on the next ``index`` of that folder)."""
    for other, marks in FOLDER_MARKS.items():
        if other != kind and any((Path(folder) / mark).exists() for mark in marks):
            raise UsesearchError(f"{folder} holds {other}: give {kind} a folder of its own")
    if kind in PICTURES_WRITTEN:
        with os.scandir(os.fspath(folder)) as listing:
            names = [entry.name for entry in listing]
        if kind == "an audit report":  # its files replace those of their names: only a report's may be there
            own = audit_report_written(names)
        else:
            own = any((Path(folder) / mark).exists() for mark in FOLDER_MARKS[kind])
        others = not_a_reports(names)
        if kind == "an audit report" and not own and others and pictures_of(names) == kind:
            raise UsesearchError(  # a report from before the mark, with a file of someone else's added
                f"{folder} holds an earlier audit report and {len(others)} other file(s) "
                f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): move them out, "
                "or give the new report a folder of its own"
            )
        if names and not own:
            raise UsesearchError(
                f"{folder} holds other files (photos?): give {kind} a folder of its own, "
                "or its pictures would be indexed with them"
            )


def refuse_overwriting(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, an output that names an input file, lies inside an input
    folder, or names the same file as another output: `segment photo.png --out photo.png`
    replaced the photo with its label map, and `--out` into a labels folder wrote JSON
    over a ground-truth label. A picture written into an input folder would be read as
    an input the next time; a report beside them is not. Keys: the flags, as the message
    names them."""
    written = {flag: Path(os.path.realpath(p)) for flag, p in outputs.items() if p is not None and not is_stream(p)}
    read = {flag: Path(os.path.realpath(p)) for flag, p in inputs.items() if p is not None}
    seen: dict[Path, str] = {}
    for flag, path in written.items():
        if path in seen:
            raise UsesearchError(f"{seen[path]} and {flag} name the same file {path}: give each its own")
        seen[path] = flag
        for source, given in read.items():
            if path == given:
                raise UsesearchError(f"{flag} {path} is the {source} input: it would be overwritten; write elsewhere")
            if given in path.parents and path.suffix.lower() in IMAGE_SUFFIXES:  # read as one next time
                raise UsesearchError(
                    f"{flag} {path} lies in {source} {given}, whose pictures are read: write elsewhere"
                )
