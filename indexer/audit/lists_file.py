"""Where an audit keeps its files in the index's folder, and its lists read back (the
web view, and the verdicts a person filled in, which are checked against them). A
light module: a verdicts file's mistake is said before the audit's models side
(torch) is imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

from usesearch.errors import NotFoundError

from ..folder import index_flags
from .items import LISTS

FOLDER, CHECKPOINT, RESULT = "audit", "checkpoint.npz", "lists.json"


def load_lists(db_dir: str | os.PathLike, db_url: str | None = None) -> dict | None:
    """The lists the last finished audit of this index wrote (None: never audited). A
    file of another shape (edited by hand, another version's) is ``NotFoundError``: no
    lists to show, said with the command that writes them again (it was a 500)."""
    path = Path(db_dir) / FOLDER / RESULT
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
        lists = found["lists"]
        if not (isinstance(found["classes"], list) and isinstance(found["splits"], list)):
            raise TypeError("classes and splits are lists")
        if not all(isinstance(lists[kind], list) and all("item" in i for i in lists[kind]) for kind in LISTS):
            raise TypeError(f"each of {', '.join(LISTS)} is a list of items")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotFoundError(
            f"{path} is not an audit's lists ({type(exc).__name__}: {exc}): "
            f"run `usesearch audit {index_flags(db_dir, db_url)}` again"
        ) from None
    return found
