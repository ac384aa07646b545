"""The ``usesearch`` command: every command module's commands under one Typer app.

The one module that imports the command modules; they import only ``options`` and
the library, so the CLI has no circle of imports."""

from __future__ import annotations

import typer

from usesearch.cli import curate, eval, index, models, train

app = typer.Typer(help="Open-vocabulary segment search (USE: Universal Segment Embeddings).", no_args_is_help=True)
for commands in (models.app, index.app, eval.app, train.app):
    app.add_typer(commands)  # no name: their commands sit at the top level
app.add_typer(models.models_app, name="models")
app.add_typer(eval.eval_app, name="eval")
app.add_typer(curate.curate_app, name="curate")
