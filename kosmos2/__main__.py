"""``python -m kosmos2``: the ``kosmos2`` command (:mod:`kosmos2.cli.main`)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
