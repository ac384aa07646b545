"""The audit's lists as files a person reads: per list ``KIND.json``, ``KIND.csv`` and
a contact sheet ``KIND.png`` of the first items, reviewed items left out unless asked."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

from usesearch.errors import UsesearchError, first_few, first_line
from usesearch.io.atomic import write_atomic
from usesearch.io.own_folders import mark_audit_report
from usesearch.io.tables import text_cell

from ..export import contact_sheet
from ..hits import Hit
from ..store import Store

LEAK_PHOTOS_DRAWN = 4  # photos of a same-content group on a leaks sheet
CSV_COLUMNS = {
    "swapped": ["labelled", "preferred", "labelled_probability", "preferred_probability"],
    "overlooked": ["proposed", "covered"],
    "badly_located": ["labelled", "iou", "proposal_id"],
    "leaks": ["kind", "splits", "images", "paths"],
    "outliers": ["labelled"],
}
COMMON = ["rank", "item", "score", "segment_id", "annotation_id", "split", "image_id", "image"]


def unreviewed(items: list[dict], kind: str, verdicts: dict[tuple[str, str], str]) -> list[dict]:
    return [i for i in items if (kind, i["item"]) not in verdicts]


class Written(NamedTuple):
    """What ``write_lists`` wrote: each list's items, the lists whose contact sheet was
    drawn, and the photos the sheets could not read, each with why (gone, changed since
    indexing, unreadable), by name."""

    lists: dict[str, list[dict]]
    sheets: list[str]
    unreadable: dict[str, str]


def write_lists(
    lists: dict[str, list[dict]],
    store: Store,
    report_dir: str | os.PathLike,
    k: int,
    verdicts: dict[tuple[str, str], str],
    include_reviewed: bool = False,
    sheets: bool = True,
) -> Written:
    """Write each list's first ``k`` items (reviewed ones left out unless
    ``include_reviewed``, then with their verdict)."""
    out = Path(report_dir)
    mark_audit_report(out)
    written = {}
    drawn: list[str] = []
    unreadable: dict[str, str] = {}
    for kind, items in lists.items():
        shown = items if include_reviewed else unreviewed(items, kind, verdicts)
        shown = [{**i, "verdict": verdicts.get((kind, i["item"]))} for i in shown[:k]]
        written[kind] = shown
        write_atomic(out / f"{kind}.json", json.dumps(shown, indent=1))  # whole, or the last run's
        table = io.StringIO(newline="")
        writer = csv.writer(table)
        columns = COMMON + CSV_COLUMNS[kind] + ["verdict"]
        writer.writerow(columns)
        for item in shown:
            writer.writerow([_cell(item.get(c)) for c in columns])
        write_atomic(out / f"{kind}.csv", table.getvalue())
        (out / f"{kind}.png").unlink(missing_ok=True)  # a sheet of the last run's items: drawn again, or gone
        if sheets and shown:
            try:
                missing = _sheet(shown, store, out / f"{kind}.png")
            except (UsesearchError, OSError) as exc:  # the sheet could not be written: the lists still stand
                print(f"contact sheet {kind}.png skipped: {first_line(exc)}", file=sys.stderr)  # stdout: --json
                continue
            if missing is not None:
                drawn.append(kind)
                unreadable.update(missing)
    return Written(written, drawn, dict(sorted(unreadable.items())))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # JSON: a leak's paths joined by spaces could not be told apart ("café ☕.png")
        return str(text_cell(json.dumps(value, ensure_ascii=False)))
    return f"{value:.4f}" if isinstance(value, float) else str(text_cell(value) if isinstance(value, str) else value)


def _sheet(items: list[dict], store: Store, path: Path) -> dict[str, str] | None:
    """The list's contact sheet; the photos it could not read (drawn grey); None when
    no item has a stored segment to draw (no sheet is written). A leak is drawn as its
    photos side by side (the first pair of segments matched, or each photo's largest
    segment where the same content has none, of up to ``LEAK_PHOTOS_DRAWN``), each
    naming the others."""
    drawn = [(item, segment_id) for item in items for segment_id in _segments_drawn(item, store)]
    rows = store.rows(segment_id for _, segment_id in drawn)
    hits, notes = [], []
    for item, segment_id in drawn:
        row = rows.get(segment_id)
        if row is None:
            continue
        hits.append(Hit.from_row(row, item["rank"], float(item["score"])))
        notes.append(_note(item, row.image_path))
    if not hits:
        return None
    # The indexed content's hash: a photo changed since (same size) is drawn grey, as
    # `query --show` draws it, not with its stored masks over other pixels.
    return contact_sheet(hits, path, sha256_of=lambda i: getattr(store.image(i), "sha256", None), notes=notes)[1]


def _segments_drawn(item: dict, store: Store) -> list[int]:
    if "images" not in item:  # (one segment an item)
        return [item["segment_id"]] if item.get("segment_id") is not None else []
    if item.get("segments"):  # a near duplicate: the first pair matched, one on each photo
        return [int(i) for i in item["segments"][0][:2]]
    # The same content: each photo's largest segment, of a group's first LEAK_PHOTOS_DRAWN
    # (its first two alone were drawn: a third photo of the group never showed).
    largest = [store.image_segment_ids(image_id)[:1] for image_id in item["images"][:LEAK_PHOTOS_DRAWN]]
    return [ids[0] for ids in largest if ids]


def _note(item: dict, shown: str | None = None) -> str:
    """What a tile of an audit list says besides its photo: the classes it is about (a
    swap as labelled->preferred), or for a leak the name of its other photo (the one
    this tile, of photo ``shown``, is not)."""
    if "preferred" in item:
        return f"{item['labelled']}->{item['preferred']}"
    if "paths" in item:
        others = [Path(p).name for p in item["paths"] if p and p != shown]
        return f"= {first_few(others, 1)}" if others else ""
    return str(item.get("labelled") or item.get("proposed") or "")
