"""``python -m usesearch``: the same CLI as the ``usesearch`` script."""

from usesearch.cli.compat import main

main()
