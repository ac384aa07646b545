"""Where an evaluation's result goes (``Report``: a table or JSON on stdout, and a JSON
file), and its walk over the dataset (``Walk``: a progress bar, and Ctrl-C reporting
the images done so far instead of losing hours of work)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import typer

from usesearch.cli import options as opts
from usesearch.errors import UsesearchError, is_disk_full
from usesearch.io.atomic import write_atomic

T = TypeVar("T")

# `eval ... --json FILE` once wrote the result to FILE: click hands the FILE, a word
# these commands otherwise refuse, over as an extra argument (``Report.write``).
TAKING_OLD_JSON_FILE = {"allow_extra_args": True}


class Walk(Generic[T]):
    """The dataset's items with a progress bar on stderr where that is a terminal (an
    evaluation of a few thousand images runs for hours). Used as ``with walk: for item
    in walk:``, Ctrl-C ends the loop instead of the command: ``done`` items were
    evaluated whole, the result covers them and says so (``partial``), and then
    ``exit_if_interrupted`` exits 130."""

    def __init__(self, items: Sequence[T]):
        self.items, self.done, self.interrupted = items, 0, False

    def __iter__(self) -> Iterator[T]:
        from tqdm import tqdm

        for item in tqdm(self.items, unit="img", dynamic_ncols=True, disable=None):
            yield item
            self.done += 1  # asked for the next one: this one's evaluation is whole

    def __enter__(self) -> Walk[T]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> bool:
        self.interrupted = kind is KeyboardInterrupt
        return self.interrupted

    def partial(self) -> dict[str, Any]:
        """What the result says of an interrupted walk (nothing of a whole one)."""
        return {"interrupted": {"done": self.done, "of": len(self.items)}} if self.interrupted else {}

    def said(self, what: str) -> str:
        return f"{what}; interrupted: {self.done} of {len(self.items)} images" if self.interrupted else what

    def exit_if_interrupted(self) -> None:
        if self.interrupted:
            raise typer.Exit(130)


@dataclass(frozen=True)
class Report:
    """Where an evaluation's result goes: a table (or JSON) on stdout, and a JSON file."""

    as_json: opts.JsonOpt = False
    out: opts.OutJsonOpt = None

    def taking(self, extra: list[str]) -> Report:
        """This report, read with the extra arguments click passed on (checked before
        any work): the one after a ``--json`` is the old spelling's FILE."""
        if not extra:
            return self
        if not self.as_json or len(extra) > 1:
            raise UsesearchError(f"got unexpected extra arguments ({' '.join(extra)})")
        opts.deprecated("`eval ... --json FILE` is now `--out FILE` (`--json` prints JSON)")
        opts.console.stderr = False  # the table after all: on stdout (user_errors put it on stderr for --json)
        out = self.out or Path(extra[0])
        try:
            opts.result_file(out)  # as --out FILE is checked: before the models, not after the evaluation
        except typer.BadParameter as exc:
            raise UsesearchError(f"--json {out}: {exc}") from None
        return Report(as_json=False, out=out)

    def write(self, result: dict, rows: dict[str, float | None], total: tuple[str, str]) -> None:
        """The file, then the result printed. A file that cannot be written (a full disk,
        a mount gone read-only since the check) is said after the result is printed:
        hours of evaluation are never lost to it."""
        unwritten = None
        if self.out:
            try:
                write_atomic(self.out, json.dumps(result, indent=1))
            except BrokenPipeError:  # (a reader of a stream gone: ended quietly, as any closed pipe)
                raise
            except OSError as exc:
                unwritten = "disk full" if is_disk_full(exc) else exc.strerror or str(exc)
        if self.as_json:
            print(json.dumps(result, indent=1))
        else:
            width = max([len(total[0]), *map(len, rows)]) + 2
            for name, value in rows.items():
                opts.console.print(f"{name:>{width}}: {'-' if value is None else f'{100 * value:.1f}'}")
            opts.console.print(f"{total[0]:>{width}}: {total[1]}")
        if unwritten is not None:
            raise UsesearchError(f"cannot write {self.out}: {unwritten} (the result is printed above)")


with_report = opts.shared_options("report", Report)
