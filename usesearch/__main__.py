"""``python -m usesearch``: the same CLI as the ``usesearch`` script."""

from usesearch.cli.app import main

main()
