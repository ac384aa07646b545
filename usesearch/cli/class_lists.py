"""The class lists ``segment`` and ``eval`` take: ``--classes a,b`` or ``--classes-file``
(one a line), a class's id its place in the list."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

from usesearch.errors import UsesearchError


def class_list(classes: Optional[str], classes_file: Optional[Path]) -> list[str]:
    """The class names, in label order: a class's id is its place in the list, so a
    blank line inside the file (which would shift every later id) is refused, and so
    are the two ways at once."""
    names = _names(classes, classes_file)
    from usesearch.tasks.label_maps import label_dtype

    try:
        label_dtype(len(names))  # before any model loads or text is embedded
    except ValueError as exc:
        raise UsesearchError(str(exc)) from None
    return names


def _names(classes: Optional[str], classes_file: Optional[Path]) -> list[str]:
    if classes and classes_file:
        raise UsesearchError("give --classes or --classes-file, not both: a class's id is its place in one list")
    if classes_file:
        try:
            lines = classes_file.read_text(encoding="utf-8-sig").strip("\n").splitlines()  # a BOM is no name
        except (OSError, UnicodeDecodeError) as exc:
            raise UsesearchError(f"--classes-file {classes_file}: cannot read it as text ({exc})") from None
        names = [line.strip() for line in lines]
        if not any(names):
            raise UsesearchError(f"--classes-file {classes_file} holds no class name (one a line)")
        if "" in names:
            raise UsesearchError(
                f"--classes-file {classes_file}: line {names.index('') + 1} is blank, and a class's id is its line "
                "(name every class, in label order)"
            )
        return names
    # A file meant for --classes-file (segmented against one class named "cls.txt"); a class
    # name that is also a file's here ("sky") is still a name.
    if classes and "," not in classes and ("/" in classes or Path(classes).suffix) and Path(classes).is_file():
        raise UsesearchError(
            f"--classes {classes} names a file: give it with --classes-file (--classes takes names, comma-separated)"
        )
    names = [c.strip() for c in (classes or "").split(",")]
    if not any(names) and "," not in (classes or ""):
        raise ValueError("give class names with --classes 'sky,tree,...' or --classes-file FILE")
    if "" in names:
        raise UsesearchError(
            f"--classes {classes!r} has an empty name at place {names.index('') + 1} "
            "(a name with a comma: --classes-file)"
        )
    return names


def refuse_twice_named(names: list[str], flag: str) -> None:
    """One class named twice (as CLIP's tokenizer reads it: case and spacing aside) would
    split its probability between two ids, one never chosen, and lose pixels to other
    classes. (Not for an evaluation: its class list is the dataset's, ids and all.)"""
    from usesearch.models.text_keys import text_key

    first: dict[str, int] = {}
    for place, name in enumerate(names, 1):
        key = text_key(name)
        if key in first:
            earlier = names[first[key] - 1]
            said = (
                f"{name!r} is named twice"
                if earlier == name
                else f"{earlier!r} and {name!r} are one class to CLIP (its tokenizer reads no case or spacing)"
            )
            raise UsesearchError(f"{flag}: {said} (places {first[key]} and {place}); name each class once")
        first[key] = place


def report_names(names: list[str]) -> list[str]:
    """Each class's name in a report, the id added where a name occurs twice (one
    per-class score must not overwrite another's)."""
    counts = Counter(names)
    return [name if counts[name] == 1 else f"{name} [{i}]" for i, name in enumerate(names)]
