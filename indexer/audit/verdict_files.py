"""Verdicts given in a spreadsheet: a list's CSV as ``usesearch audit`` wrote it
(``KIND.csv``), its ``verdict`` column filled in, read back by ``audit --verdicts FILE``.

A cell says ``ok`` or ``wrong``; ``none`` takes a verdict back; an empty cell leaves
the item as it is (an older file must not erase verdicts given since). Which list a file
holds is read from its columns, not its name (a spreadsheet saves "swapped (1).csv").
A row counts only for the item it showed: one gone from the list, or relabelled,
redrawn or moved since (its segment, class or photo differs), is said and left to be
judged again; a verdict judged one state of an item, never another."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from usesearch.errors import AuditOutdatedError, UsesearchError
from usesearch.io.tables import cell_text
from usesearch.reports import counted

from . import reviews
from .report import CSV_COLUMNS
from .reviews import VERDICTS, state_of

TAKE_BACK = "none"


@dataclass
class VerdictFile:
    """What one file says: its list, the verdicts to keep ``(kind, item, verdict or None,
    state)``, and the items it names that are gone from the list or changed since."""

    path: Path
    kind: str
    marks: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts = {v: sum(1 for m in self.marks if m[2] == v) for v in VERDICTS}
        back = sum(1 for m in self.marks if m[2] is None)
        n = len(self.marks) - back
        line = f"{self.path.name} ({self.kind}): {n} verdict{'' if n == 1 else 's'} kept"
        given = [f"{n} {v}" for v, n in counts.items() if n]
        line += f" ({', '.join(given)})" if given else ""
        line += f", {back} taken back" if back else ""
        if self.gone and not self.marks and not self.changed:  # (another index's list: "the index changed" misled)
            line += (
                f"; none of its {counted(len(self.gone), 'item')} is in the list now (fixed and audited again, "
                "or a list of another index's audit?)"
            )
        elif self.gone:
            line += f"; {len(self.gone)} no longer in the list (the index changed since), not kept"
        if self.changed:
            line += (
                f"; {len(self.changed)} changed since the file was written (e.g. {self.changed[0]}): judge them again"
            )
        return line


def keep_verdicts(
    db_dir: str | os.PathLike, files: list[str | os.PathLike], db_url: str | None = None
) -> list[VerdictFile]:
    """Each file's verdicts kept in the index's catalog, all in one transaction after
    every file was read (a bad cell in the last file keeps none); what each file said.
    Refused where the index changed since its last audit: a row is checked against the
    lists, which would still show an item relabelled since."""
    from ..folder import index_flags, open_store
    from .lists_file import load_lists

    flags = index_flags(Path(db_dir), db_url)
    lists = load_lists(db_dir, db_url)
    if lists is None:
        raise UsesearchError(
            f"{db_dir} has not been audited yet, so no verdict can be given: run `usesearch audit {flags}` "
            "and fill in the verdict column of the lists' CSVs"
        )
    store = open_store(Path(db_dir), db_url, read_only=True)  # (verdicts are kept as the web view keeps them)
    try:
        if lists.get("generation") not in (None, store.generation()):
            raise AuditOutdatedError(
                f"{db_dir} changed since its last audit (an `index`, `prune` or `compact` run): run `usesearch "
                f"audit {flags}` first, then give the files; their rows are checked against the lists"
            )
        read = [read_verdicts(path, lists["lists"]) for path in files]
        given: dict[tuple[str, str], tuple[Path, str | None]] = {}
        for one in read:
            for kind, item, verdict, _ in one.marks:
                other = given.setdefault((kind, item), (one.path, verdict))
                if other[1] != verdict:
                    raise UsesearchError(
                        f"{item[:80]} has one verdict in {other[0]} and another in {one.path}; no verdict was kept"
                    )
        reviews.mark_many(store.engine, [mark for one in read for mark in one.marks])
    finally:
        store.close()
    return read


def read_verdicts(path: str | os.PathLike, lists: dict[str, list[dict]]) -> VerdictFile:
    """The verdicts of one CSV against the audit's current ``lists``. A file that is no
    list's CSV, or holds a verdict that is none of ok, wrong, none, is refused in one line
    naming the row, before any verdict is kept."""
    path = Path(path)
    try:
        # newline="": a quoted cell's line breaks (a file name holding one) stay in the cell,
        # as the csv module asks; Excel's "CSV UTF-8" starts with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _read(path, f, lists)
    except UnicodeDecodeError:
        raise UsesearchError(f'{path} is not UTF-8 text: save it as "CSV UTF-8"') from None
    except OSError as exc:
        raise UsesearchError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read(path: Path, f, lists: dict[str, list[dict]]) -> VerdictFile:
    first = f.readline()
    if not first.strip():
        raise UsesearchError(f"{path} is empty: give an audit list's CSV with its verdict column filled in")
    f.seek(0)
    delimiter = max(",;\t", key=first.count)  # (spreadsheets of some locales save ';', others tabs)
    rows = csv.reader(f, delimiter=delimiter)
    try:
        header = [cell.strip().lower() for cell in next(rows)]  # ("Verdict": a spreadsheet's capital)
        twice = sorted({name for name in header if name and header.count(name) > 1})
        if twice and {"item", "verdict"} <= set(header):  # (else no list's CSV at all: said as such)
            raise UsesearchError(f"{path} has {', '.join(twice)} twice among its columns: keep one of each")
        kind = _kind_of(header, path)
        column = {name: n for n, name in enumerate(header)}
        current = {item["item"]: item for item in lists.get(kind, [])}
        found = VerdictFile(path, kind)
        seen: dict[str, tuple[int, str | None]] = {}
        for row in rows:
            line = rows.line_num
            cell = _cells(row, column)
            given = cell("verdict").strip().lower()
            if not given:
                continue
            if given not in (*VERDICTS, TAKE_BACK):
                raise UsesearchError(
                    f"{path}:{line}: a verdict is ok, wrong or {TAKE_BACK} (to take one back; leave it empty to keep "
                    f"the item as it is), not {given[:40]!r}; no verdict was kept"
                )
            verdict = None if given == TAKE_BACK else given
            item = cell("item").strip()
            if item in seen and seen[item][1] != verdict:
                raise UsesearchError(
                    f"{path}:{line}: {item[:80]} has another verdict at line {seen[item][0]}; no verdict was kept"
                )
            seen[item] = (line, verdict)
            now = current.get(item)
            if now is None:
                found.gone.append(item)
            elif not _shows(kind, now, cell):
                found.changed.append(item)
            else:
                found.marks.append((kind, item, verdict, state_of(kind, now)))
    except csv.Error as exc:  # (a cell past the csv module's field limit, a NUL byte)
        raise UsesearchError(f"{path}:{rows.line_num}: not a CSV row ({exc})") from None
    found.marks = list({m[1]: m for m in found.marks}.values())  # an item given twice the same verdict: once
    return found


def _kind_of(header: list[str], path: Path) -> str:
    """The list whose own columns the file holds, all of them and no other list's: a
    list's CSV with a column deleted was read as another list's (outliers' one column is
    in swapped's too), and its verdicts kept against that list."""
    have = set(header)
    lacking = {"item", "verdict"} - have
    if lacking:
        raise UsesearchError(
            f"{path} is not an audit list's CSV: it has no {' or '.join(sorted(lacking))} column "
            "(give a KIND.csv that `usesearch audit` wrote, its verdict column filled in, saved as CSV UTF-8)"
        )
    own = have & {column for columns in CSV_COLUMNS.values() for column in columns}
    for kind, columns in CSV_COLUMNS.items():
        if set(columns) == own:
            return kind
    near = max(CSV_COLUMNS, key=lambda kind: len(own & set(CSV_COLUMNS[kind])) - len(own - set(CSV_COLUMNS[kind])))
    missing = [c for c in CSV_COLUMNS[near] if c not in own]
    extra = sorted(own - set(CSV_COLUMNS[near]))
    said = (f"lacks {', '.join(missing)}" if missing else "") + (" and " if missing and extra else "")
    said += f"holds {', '.join(extra)} of another list" if extra else ""
    raise UsesearchError(
        f"{path} holds the columns of no one audit list (nearest: {near}, but it {said}): "
        "give a KIND.csv that `usesearch audit` wrote, its columns as written"
    )


def _cells(row: list[str], column: dict[str, int]) -> Callable[[str], str]:
    """A row's cell by column name, as written ("" where the row or the file lacks it)."""

    def cell(name: str) -> str:
        at = column.get(name)
        return cell_text(row[at]) if at is not None and at < len(row) else ""

    return cell


def _whole_number(text: str) -> str | None:
    """A cell holding a whole number as written ("87"), or as a spreadsheet re-saved it
    ("87.0", "87,0"): its digits; other text as it is, None when empty."""
    text = text.strip()
    try:
        number = float(text.replace(",", "."))
    except ValueError:
        return text or None
    return str(int(number)) if number.is_integer() else text


def _shows(kind: str, now: dict, cell: Callable[[str], str]) -> bool:
    """The row shows the item as it is now: the same segment and class, the same photo
    (a leak: the same photos' paths)."""
    if kind == "leaks":
        try:
            return json.loads(cell("paths")) == now.get("paths")
        except ValueError:
            return False
    row: dict = {"segment_id": _whole_number(cell("segment_id"))}
    row.update({name: cell(name) for name in ("labelled", "proposed") if name in CSV_COLUMNS[kind]})
    return state_of(kind, row) == state_of(kind, now) and cell("image") == (now.get("image") or "")
