"""``python -m usesearch``: the same CLI as the ``usesearch`` script."""

from .cli import app

app(prog_name="usesearch")
