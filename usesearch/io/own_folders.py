"""The folders usesearch writes, known by the files only they hold. A command refuses
to write one kind into another's folder (``cli/paths.py``: any of its marks), and the
photo walk (``files.walk``) leaves out the ones that hold pictures (``pictures_of``:
names no photo folder holds together): an audit report's contact sheets, or a
picture saved into an index's folder beside the photos, are not photos to index."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

AUDIT_LISTS = ("swapped", "overlooked", "badly_located", "leaks", "outliers")  # (``audit/report.py``'s: tested)
AUDIT_MARK = ".usesearch-audit"  # written first into an audit report's folder: its files may be replaced
# What an audit report (``audit``'s lists, ``eval audit``'s suspects) writes; a folder
# holding anything else is someone's (a report.html or leaks.csv of their own).
AUDIT_FILES = frozenset(
    ("report.html", "suspects.csv", "suspects.json", "problems.json", "summary.json", AUDIT_MARK)
    + tuple(f"{kind}.{ext}" for kind in AUDIT_LISTS for ext in ("json", "csv", "png"))
)
OS_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")  # a file manager's, in any folder it has shown
OUTPUT_MARKS = {
    "an index": ("segments.sqlite", "vectors.faiss", "embeddings"),  # (the indexer's names: tested)
    "a curated dataset": ("manifest.json", "shards"),
    "a training run": ("trainer.safetensors", "trainer.pt", "log.csv"),  # (trainer.pt: runs from before)
    # ``eval audit``'s report, and ``audit``'s lists.
    "an audit report": (AUDIT_MARK, "suspects.csv", "report.html") + tuple(f"{kind}.csv" for kind in AUDIT_LISTS),
}


# What each kind's folder surely holds: any one of these sets of files (stricter than
# ``OUTPUT_MARKS``, where one mark suffices to refuse a folder for another kind, and a
# photo folder may hold a manifest.json). A file a command writes is refused anywhere
# under such a folder (``holding_folder``).
SURE_MARKS = {
    "an index": (("segments.sqlite",), ("embeddings/index-id",)),  # (index-id alone: a catalog on PostgreSQL)
    "a curated dataset": (("manifest.json", "shards"),),
    "a training run": (("trainer.safetensors",), ("trainer.pt", "log.csv")),  # (trainer.pt alone: any project's)
    "an audit report": ((AUDIT_MARK,),),
}


def sure_kind(folder: str | os.PathLike) -> str | None:
    """The kind of usesearch folder ``folder`` surely is (``SURE_MARKS``), or None."""
    for kind, alternatives in SURE_MARKS.items():
        if any(all(os.path.exists(os.path.join(folder, name)) for name in files) for files in alternatives):
            return kind
    return None


def _usesearch_folders_up(folder: str) -> Iterator[tuple[str, str]]:
    """Each usesearch folder (its kind, its path) from ``folder`` up to the root, the
    nearest first (``SURE_MARKS``)."""
    while True:
        kind = sure_kind(folder)
        if kind is not None:
            yield kind, folder
        above = os.path.dirname(folder)
        if above == folder:
            return
        folder = above


def index_holding(folder: str | os.PathLike) -> str | None:
    """The index folder that ``folder`` is or lies in, at any depth (links followed), or
    None: where an audit report may go only for that index's own audit."""
    return next((found for kind, found in _usesearch_folders_up(os.path.realpath(folder)) if kind == "an index"), None)


def holding_folder(path: str | os.PathLike) -> tuple[str, str] | None:
    """The usesearch folder (its kind, its path) that a file written at ``path`` would
    lie in, at any depth, or None. Its files are the commands' own: an export named
    ``segments.sqlite`` or ``embeddings/chunk-000000.f16`` of another index replaced it
    and destroyed that index, and one named ``calibration.json`` would have been read as
    its calibration. Links are followed (a link's file is replaced where it lies)."""
    return next(_usesearch_folders_up(os.path.dirname(os.path.realpath(path))), None)


def pictures_of(names: Iterable[str]) -> str | None:
    """The kind of usesearch folder, among those that may hold pictures, that a folder
    holding files of these ``names`` is, or None. Stricter than ``OUTPUT_MARKS`` (a
    photo folder may well hold a ``manifest.json``): an index's database, or an audit's
    table with its JSON twin."""
    held = set(names)
    if "segments.sqlite" in held:
        return "an index"
    if AUDIT_MARK in held or any({f"{kind}.csv", f"{kind}.json"} <= held for kind in ("suspects", *AUDIT_LISTS)):
        return "an audit report"
    return None


# What a desktop leaves in any folder it shows (and a killed write's ``.NAME.PID.tmp``):
# hidden or the system's, never a photo, they do not make a report's folder someone else's.
SYSTEM_FILES = frozenset(("Thumbs.db", "desktop.ini"))


def not_a_reports(names: Iterable[str]) -> list[str]:
    """Those of ``names`` an audit report never writes (hidden and system files left out)."""
    return sorted(n for n in names if n not in AUDIT_FILES and not n.startswith(".") and n not in SYSTEM_FILES)


def audit_report_written(names: Iterable[str]) -> bool:
    """True when a folder holding files of these ``names`` is an audit report's, whose
    files a new report may replace: it holds the report's mark, or (written before the
    mark) nothing but a report's files, a list's table with its JSON twin among them."""
    held = set(names)
    return AUDIT_MARK in held or (not not_a_reports(held) and pictures_of(held) == "an audit report")


def mark_audit_report(folder: str | os.PathLike) -> None:
    """Made (and marked) before a report writes its first file there."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, AUDIT_MARK), "a"):
        pass


def why_unwritable(folder: str | os.PathLike) -> tuple[str, str] | None:
    """(the folder that is there, why) where this process cannot write ``folder``, or
    make it (a new one: the nearest folder above it that is there, which would hold
    it); None where it can. Asked before any work, not after a model run: "Read-only
    file system" alone, once the models had loaded, named neither folder nor flag."""
    there = os.path.abspath(folder)
    while not os.path.exists(there) and os.path.dirname(there) != there:
        there = os.path.dirname(there)
    if not os.path.isdir(there) or os.access(there, os.W_OK):
        return None
    try:
        read_only = bool(os.statvfs(there).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # (no statvfs: not a POSIX system)
        read_only = False
    return there, "is on a read-only file system" if read_only else "is not writable by this user"
