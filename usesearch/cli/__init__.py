"""The ``usesearch`` command line, the top floor: a thin Typer layer over the Python API.

``options`` declares every shared option once; each command module imports only it
and the library; ``app`` assembles the commands (and is the one module that imports
the command modules)."""
