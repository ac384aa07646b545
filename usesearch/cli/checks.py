"""Callbacks that check an option's value as the command line is read, before any
model library loads: a typo in a preset or a device was refused seconds later."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer


def known_preset(value: str | None) -> str | None:
    """A preset name, or a head checkpoint (which names its preset), checked as the
    command line is read: a typo was refused only once the model libraries had loaded
    (4-6 s), or after a run's photos were read."""
    from usesearch.errors import UnknownPresetError
    from usesearch.models.presets import check_preset_name

    try:
        if value is not None:
            check_preset_name(value)
    except UnknownPresetError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def checked_by(fault_of: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    """A callback checking an option as the command line is read: the value, or one line
    saying what ``fault_of`` finds wrong with it (None: nothing)."""

    def check(value: Any) -> Any:
        if fault := fault_of(value):
            raise typer.BadParameter(fault)
        return value

    return check
