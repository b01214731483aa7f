"""``python -m tokenfleet.cli``: the same entry point as the ``tokenfleet`` script."""

from tokenfleet.cli.app import main

main()
