"""``usesearch`` command line: a thin Typer layer over the Python API."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import UsesearchError

app = typer.Typer(help="Open-vocabulary segment search (USE: Universal Segment Embeddings).", no_args_is_help=True)
models_app = typer.Typer(help="Model presets and their weights.", no_args_is_help=True)
app.add_typer(models_app, name="models")
# No markup: what is printed is data (file names like `x[/]y.png`, query texts), never
# instructions to rich; the few styled words say so with ``Text(..., style=...)``.
console = Console(markup=False)

PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", "-p", help="Model preset: b16, l14-336, or tiny (random weights, for trials). Default: the --head's preset, else b16.")]
EmbedderOpt = Annotated[str, typer.Option("--embedder", help="'use' (trained head) or 'crop' (training-free).")]
HeadOpt = Annotated[Optional[Path], typer.Option("--head", help="Head checkpoint (.safetensors + .json).")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="Where every model runs: cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu).")]
FaissDeviceOpt = Annotated[Optional[str], typer.Option(
    "--faiss-device", help="Where FAISS runs: cpu or cuda (default: cuda only where the installed faiss has GPU support).")]


DEBUG_ENV = "USESEARCH_DEBUG"


def shared_options(into: str, make, options: dict):
    """Give a command options declared once for several commands: ``options`` maps
    each name to (Annotated type, default); Typer reads the signature made here, and
    the command receives them as one object, ``make(**values)``, in ``into``."""
    import inspect
    import typing

    def decorate(command):
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)  # the Annotated objects, not their strings
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != into]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                  for name, (annotation, default) in options.items()]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name, default) for name, (_, default) in options.items()}
            return command(*args, **{into: make(**values)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + shared)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
        return wrapper

    return decorate


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def user_errors(fn):
    """Every failure ends in one line on stderr and a non-zero exit, never a wall of
    frames: 2 for what the user can fix (bad input, missing file, full disk, busy
    database), 1 for an unexpected error, which names how to see its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import errno
        import os

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            code, message = 2, _one_line(exc)
            if "database or disk is full" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
                message = f"disk full: {getattr(exc, 'filename', None) or message}"
            elif isinstance(exc, (UsesearchError, ValueError)):
                pass
            elif isinstance(exc, OSError):
                where = exc.filename if exc.filename is not None else ""
                message = f"{where}: {exc.strerror or message}" if where else message
            elif type(exc).__module__.startswith("sqlalchemy"):
                message = f"database: {_one_line(getattr(exc, 'orig', None) or exc)}"  # locked, corrupt or unreachable
            else:
                code = 1
                message = f"unexpected {type(exc).__name__}: {message} (set {DEBUG_ENV}=1 to see the traceback)"
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(code) from None

    return wrapper


@models_app.command("list")
@user_errors
def models_list() -> None:
    """Show each preset and whether its weights are on this machine."""
    from .presets import PRESETS
    from .weights import preset_status, usesearch_home

    table = Table(title=f"usesearch presets (USESEARCH_HOME={usesearch_home()})")
    for column in ("preset", "component", "weights", "status", "location"):
        table.add_column(column, overflow="fold")
    for preset in PRESETS.values():
        for i, status in enumerate(preset_status(preset)):
            if not status.needed:
                state, where = Text("seeded random", style="cyan"), ""
            elif status.present:
                state, where = Text("present", style="green"), str(status.path)
            else:
                state, where = Text("missing", style="red"), f"put at {status.expected}"
            table.add_row(preset.name if i == 0 else "", status.component, status.name, state, where)
        table.add_section()
    console.print(table)


@models_app.command("pull")
@user_errors
def models_pull(preset: Annotated[str, typer.Argument(help="Preset whose weights to download, or sam2:MODEL for --masker sam2.")]) -> None:
    """Download a preset's missing weights (CLIP, DINOv2, SAM), or a SAM 2.1 model's, into their caches."""
    from .presets import get_preset
    from .weights import pull

    if preset.startswith("sam2:"):
        from .sam2_models import pull_sam2

        done = pull_sam2(preset.split(":", 1)[1])
    else:
        done = pull(get_preset(preset))
    for line in done or [f"all weights of {preset!r} are already present"]:
        console.print(line)


@app.command()
@user_errors
def embed(
    image: Annotated[Path, typer.Argument(help="An image file.", exists=True, dir_okay=False)],
    text: Annotated[list[str], typer.Argument(help="One or more texts to rank the segments by.")],
    preset: PresetOpt = None,
    embedder: Annotated[Optional[str], typer.Option("--embedder", help="use | crop (default: use where a head exists).")] = None,
    head: HeadOpt = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Segments shown per text.")] = 3,
    device: DeviceOpt = None,
) -> None:
    """Propose segments in one image (weight-free superpixel masker) and rank them per text."""
    from .factory import choose_preset, load_model, resolve_embedder
    from .images import read_image
    from .maskers import FelzenszwalbMasker

    preset = choose_preset(preset, head)
    model = load_model(preset, embedder=resolve_embedder(preset, embedder, head), device=device, head=head)
    _print_ranking(model, image, read_image(image), FelzenszwalbMasker(), text, k)


def _print_ranking(model, name: Path | str, rgb, masker, texts: list[str], top: int) -> None:
    import numpy as np

    from .maskers import proposal_masks

    proposals = masker(rgb)
    if not proposals:
        console.print(f"{name}: no segments found")
        return
    vectors = model.embed_segments(rgb, proposal_masks(proposals, rgb.shape[:2]))
    scores = vectors @ model.embed_text(texts).T
    table = Table(title=f"{name}: {len(proposals)} segments, model {model.fingerprint}")
    for column in ("text", "rank", "score", "bbox (x, y, w, h)", "area"):
        table.add_column(column)
    for j, query in enumerate(texts):
        for rank, i in enumerate(np.argsort(-scores[:, j])[:top], 1):
            table.add_row(query if rank == 1 else "", str(rank), f"{scores[i, j]:.3f}", str(proposals[i].bbox), str(proposals[i].area))
    console.print(table)


# Index-stage commands register themselves on ``app``.
from . import cli_curate, cli_eval, cli_index, cli_train  # noqa: E402,F401
