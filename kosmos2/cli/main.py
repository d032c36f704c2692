"""The ``kosmos2`` command (also ``python -m kosmos2``): one task on one image (:mod:`.task`), or a
subcommand: ``label`` (:mod:`.label`), ``train`` (:mod:`.train`), ``eval`` (:mod:`.eval`), ``shapes``
(:mod:`.shapes`), ``selfcheck`` (:mod:`.selfcheck`)."""

from __future__ import annotations

import importlib
import sys

# each subcommand's module (imported when used), whose main(argv) returns the exit status
SUBCOMMANDS: dict[str, str] = {
    "label": "label.cli",
    "train": "train",
    "eval": "eval",
    "shapes": "shapes",
    "selfcheck": "selfcheck.command",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the process's); returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(f".{SUBCOMMANDS[argv[0]]}", __package__)
        return int(module.main(argv[1:]))
    from .task import main as run_one

    return run_one(argv)
