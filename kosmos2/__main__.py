"""Command line: ``python -m kosmos2 IMAGE [--task ...] [--text ...] [--box x1,y1,x2,y2 ...]``.

Subcommands: ``python -m kosmos2 label DIR ...`` labels a folder (``kosmos2.label``);
``python -m kosmos2 selfcheck`` checks the real checkpoint against recorded outputs
(``kosmos2.selfcheck``).

Prints the caption and entities (or JSON with ``--json``) and writes the annotated image with
``--out``, drawn by the same code as the app's download. Tasks come from the task table and the
generation flags from the settings spec (``kosmos2.demo``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from .demo.draw import annotate
from .demo.inputs import InputError
from .demo.loading import ModelHolder, SettingError
from .demo.execute import execute_to_end
from .demo.settings import DETECTION_SETTINGS, SETTINGS, Setting
from .demo.tasks import TASKS, Task, build_request
from .hub import CheckpointError

SUBCOMMANDS = {"label": "kosmos2.label", "selfcheck": "kosmos2.selfcheck"}  # each module has main(argv) -> int


class UsageError(ValueError):
    """A bad command line (or a file it names); the message is one line for the user: an ``error:`` line,
    exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are a :class:`UsageError` with argparse's message and where to look,
    instead of its usage block and exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def program() -> str:
    """How the user ran this command line: ``kosmos2`` (the console script) or ``python -m kosmos2``."""
    return "kosmos2" if os.path.basename(sys.argv[0]) == "kosmos2" else "python -m kosmos2"


def flag(name: str) -> str:
    """The command-line flag of a setting: ``max_new_tokens`` -> ``--max-new-tokens``."""
    return "--" + name.replace("_", "-")


def add_setting_flags(group: argparse._ArgumentGroup, spec: Mapping[str, Setting]) -> None:
    """One typed flag per setting of ``spec`` (values are checked by the settings group's from_user)."""
    for name, s in spec.items():
        group.add_argument(flag(name), dest=name, type=None if s.choices else s.kind, choices=s.choices or None,
                           help=s.describe())


def setting_flags(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """The setting flags given (those of :func:`add_setting_flags`), by name; :class:`UsageError` naming those
    that are not settings of ``task``."""
    given = {name: getattr(args, name) for name in (*SETTINGS, *DETECTION_SETTINGS) if getattr(args, name) is not None}
    foreign = [flag(name) for name in given if name not in task.settings.spec()]
    if foreign:
        raise UsageError(f"{', '.join(foreign)} does not apply to --task {task.name}")
    return given


def parser() -> argparse.ArgumentParser:
    """The command line's arguments: the task table's tasks and one flag per generation setting."""
    p = OneLineParser(prog=program(), description="Run a KOSMOS-2 task on an image.")
    p.add_argument("image", help="image file")
    p.add_argument("--task", choices=list(TASKS), default="caption",
                   help=" ".join(f"{t.name} ({t.title}): {t.description.rstrip('.')}." for t in TASKS.values()))
    p.add_argument("--text", help=" ".join(f"{t.name}: {t.text}" + (f" ({t.text_info.rstrip('.')})" if t.text_info else "")
                                           + "." for t in TASKS.values() if t.text))
    p.add_argument("--box", action="append", default=[], metavar="x1,y1,x2,y2",
                   help="a box in pixels (repeatable), for " + ", ".join(
                       f"{t.name} ({t.boxes})" for t in TASKS.values() if t.boxes != "none"))
    p.add_argument("--no-grounding", action="store_true", help="no <grounding> tag, for " + ", ".join(
        t.name for t in TASKS.values() if t.grounding_option))
    p.add_argument("--out", help="write the annotated image (PNG) here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--checkpoint", help="checkpoint folder or hub id (default: $KOSMOS2_CHECKPOINT or the hub model)")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random checkpoint")
    add_setting_flags(p.add_argument_group("generation settings"), SETTINGS)
    add_setting_flags(p.add_argument_group("detection settings (--task detect)"), DETECTION_SETTINGS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one task on one image (or a subcommand); returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    try:  # every setting and input is checked before anything loads
        args = parser().parse_args(argv)
        task = TASKS[args.task]
        given = setting_flags(args, task)
        if task.boxes == "required" and not args.box:
            raise UsageError(f"--task {args.task} needs a box: give --box x1,y1,x2,y2 (in pixels)")
        holder = ModelHolder(args.checkpoint, force_tiny=args.tiny)
        request = build_request(args.task, args.image, args.text, ";".join(args.box), not args.no_grounding)
        settings = task.settings.from_user(**given)
        loaded = holder.get()  # an explicitly named checkpoint that cannot be loaded is an error, not a fallback
    except (UsageError, InputError, SettingError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if loaded.is_tiny:  # (why, when it is the offline fallback, is said once by the loading line above)
        print("warning: tiny checkpoint with random weights: outputs are random", file=sys.stderr)
    result = execute_to_end(loaded, task, request, settings)
    holder.close()
    if args.out:
        annotate(request.image, result.annotations()).save(args.out, format="PNG")
    if args.json:
        print(json.dumps({"caption": result.caption, "entities": result.entities_json(), "raw": result.raw,
                          "seconds": round(result.seconds, 3), "new_tokens": result.new_tokens}, indent=2))
    else:
        print(result.caption)
        for e in result.entities:
            print(f"  {e.phrase!r} {e.span}: " + ", ".join(str(b) for b in e.pixel_boxes))
        print(result.timing_text(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
