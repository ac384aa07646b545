"""Where a COCO file's image entry's photo lies: under which of the folders given, as
the folder walk spells it (the catalog's key), and every file a name leads to where
two folders hold it (an ambiguous entry). Shared by ``index --coco``, the audit and
curation's COCO sources."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator


def photo_path(folders: list[str], file_name: str) -> str | None:
    """The file an entry names, under the first of ``folders`` that has it, spelled
    as the folder walk spells it (the store's key); None where none has it or the
    name leads outside its folder."""
    return next(_candidates(folders, file_name), None)


def photo_paths(folders: list[str], file_name: str) -> list[str]:
    """Every file an entry's name leads to under ``folders`` (``photo_path``'s spelling),
    a file reached through two of them once: more than one, and the entry is ambiguous
    (per-camera folders each holding IMG_0001.jpg). One folder: ``photo_path``'s stat."""
    found = list(_candidates(folders, file_name))
    if len(found) < 2:
        return found
    files: dict[str, str] = {}
    for candidate in found:
        files.setdefault(os.path.realpath(candidate), candidate)
    return list(files.values())


def _candidates(folders: list[str], file_name: str) -> Iterator[str]:
    # A name as macOS tools write it (NFD) for a file named NFC, or the other way round:
    # looked for in the other form where the name as written is not there.
    spellings = dict.fromkeys([file_name, *(unicodedata.normalize(form, file_name) for form in ("NFC", "NFD"))])
    for folder in folders:
        root = os.path.abspath(folder)
        for name in spellings:
            candidate = os.path.normpath(os.path.join(root, name))
            if candidate.startswith(root.rstrip(os.sep) + os.sep) and os.path.isfile(candidate):
                yield candidate
                break
