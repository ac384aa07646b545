"""A COCO file read whole for the commands that take one as input beside photos
(``curate run --input-format coco-*``, ``eval audit``, ``eval parts``): one line naming the
file and what it lacks, before any model loads, instead of a KeyError or a parser's
message that names neither. (``index --coco`` streams its file: ``io/coco_dataset.py``.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from usesearch.errors import CocoFileError, first_line

LISTS = ("images", "annotations", "categories")


def load_coco_json(path: str | os.PathLike, needs: tuple[str, ...] = LISTS) -> dict[str, Any]:
    """The file's JSON object, which must hold the lists ``needs``."""
    path = Path(path)
    try:
        coco = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CocoFileError(f"{path} is not a COCO annotations file: {first_line(exc)}") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(key), list) for key in needs):
        raise not_coco(path, needs)
    return coco


def not_coco(path: str | os.PathLike, needs: tuple[str, ...] = LISTS) -> CocoFileError:
    """The one-line refusal of a file that lacks COCO's lists."""
    return CocoFileError(f"{path} is not a COCO annotations file: it needs the lists {', '.join(needs)}")
