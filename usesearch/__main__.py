"""``python -m usesearch``: the same CLI as the ``usesearch`` script."""

from .cli_compat import main

main()
