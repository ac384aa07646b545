"""CSV cells a spreadsheet shows as text: a cell from a dataset (a class name, a file
name) that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel and LibreOffice as a formula (``=HYPERLINK(...)``, ``=cmd|...``). Such a text cell
gets a leading ``'``, OWASP's advice for CSV injection; numbers are written as they are."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: object) -> object:
    """``value`` for a CSV row: a string a spreadsheet would run, quoted as text."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
