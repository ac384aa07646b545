"""How large a photo the commands that read photos (index, segment, similar --image,
curate run) take: ``--max-pixels`` and ``--max-bytes``, declared once. The limits keep a
decompression bomb or a stray disk image from taking the machine's memory; a scan
archive of 150-megapixel TIFFs raises them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from usesearch.errors import ImageReadError
from usesearch.io.files import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, PAST_LIMIT, read_photo

from .options import console, shared_options


def count_from(unit: int, default: int) -> Callable[[str], int]:
    """A size option's parser: a number, or one with k, M or G (``unit`` to the 1st, 2nd
    or 3rd power: 1000 for pixels, 1024 for bytes), rounded; at least 1, else one line."""

    def parse(text: str | int) -> int:
        if isinstance(text, int):  # the default, given as is
            return text
        power = {"k": 1, "m": 2, "g": 3}.get(text.strip()[-1:].lower(), 0)
        try:
            value = float(text.strip()[:-1] if power else text) * unit**power
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 1 <= round(value) < 2**63):
            raise typer.BadParameter(
                f"{text!r}: give a number of at least 1, or one with k, M or G (default {default:,})"
            )
        return round(value)

    return parse


def limit_option(flag: str, unit: int, default: int, metavar: str, help: str) -> typer.models.OptionInfo:
    """A size limit's option: a number, or one with k, M or G in ``unit``'s powers."""
    return typer.Option(flag, parser=count_from(unit, default), metavar=metavar, help=help)


@dataclass(frozen=True)
class PhotoLimits:
    """How large a photo a command reads: past either limit it is refused (from its
    size, from its header) and never decoded, a failure recorded and the run going on."""

    max_pixels: Annotated[
        int,
        limit_option(
            "--max-pixels",
            1000,
            DEFAULT_MAX_PIXELS,
            "<pixels>",
            "Refuse photos of more pixels, from their header (default 100M; 250M, or 250000000, for scans). "
            "Memory grows with it: a 400M-pixel photo took about 10 GB to index.",
        ),
    ] = DEFAULT_MAX_PIXELS
    max_bytes: Annotated[
        int,
        limit_option(
            "--max-bytes",
            1024,
            DEFAULT_MAX_BYTES,
            "<bytes>",
            "Refuse larger files unread (default 512M, M = MiB; 2G for large TIFFs).",
        ),
    ] = DEFAULT_MAX_BYTES

    def read(self, path: Path | str, name: str | None = None):
        """One image file -> RGB within these limits; a refusal for size names the options."""
        try:
            return read_photo(path, name, self.max_bytes, self.max_pixels)
        except ImageReadError as exc:
            if PAST_LIMIT in str(exc):
                raise ImageReadError(f"{exc} (--max-pixels, --max-bytes raise the limits)") from exc
            raise


with_photo_limits = shared_options("limits", PhotoLimits)


def say_past_limits(failures: list[tuple[str, str]]) -> None:
    """One line for the photos a run refused for their size: which options let them in."""
    past = sum(PAST_LIMIT in reason for _, reason in failures)
    if past:
        console.print(
            f"  {past} photo(s) refused for their size: --max-pixels and --max-bytes raise the limits, "
            "and a run with them raised tries those photos again"
        )
