"""CSV cells a spreadsheet shows as text: a cell from a dataset (a class name, a file
name) that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel and LibreOffice as a formula (``=HYPERLINK(...)``, ``=cmd|...``). Such a text cell
gets a leading ``'``, OWASP's advice for CSV injection; numbers are written as they are."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: object) -> object:
    """``value`` for a CSV row: a string a spreadsheet would run, quoted as text (and
    one starting with the quote itself, so that ``cell_text`` gives back what was written)."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, "'")):
        return "'" + value
    return value


def cell_text(cell: str) -> str:
    """What ``text_cell`` wrote, read back: the leading ``'`` dropped where it quoted a
    formula's start (a spreadsheet that saved the file may have dropped it already)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith((*FORMULA_STARTS, "'")) else cell
