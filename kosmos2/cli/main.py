"""The ``kosmos2`` command (also ``python -m kosmos2``): one task on one image (:mod:`.task`), or a
subcommand: ``label`` (:mod:`.label`), ``train`` (:mod:`.train`), ``shapes`` (:mod:`.shapes`), ``selfcheck``
(:mod:`.selfcheck`)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def _label(argv: list[str]) -> int:
    from .label.cli import main

    return main(argv)


def _train(argv: list[str]) -> int:
    from .train import main

    return main(argv)


def _shapes(argv: list[str]) -> int:
    from .shapes import main

    return main(argv)


def _selfcheck(argv: list[str]) -> int:
    from .selfcheck import main

    return main(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "label": _label,
    "train": _train,
    "shapes": _shapes,
    "selfcheck": _selfcheck,
}  # loaded when used


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the process's); returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    from .task import main as run_one

    return run_one(argv)
