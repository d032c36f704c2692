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
from collections.abc import Mapping, Sequence
from typing import Any

from .demo.draw import annotate
from .demo.inputs import InputError
from .demo.loading import DTYPES, ModelHolder, SettingError
from .demo.execute import execute_to_end
from .demo.settings import DETECTION_SETTINGS, SETTINGS, Setting
from .demo.tasks import TASKS, Task, build_request
from .hub import CheckpointError
from .precision import INT8_MODES

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


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--tiny``, ``--dtype`` and ``--quantize``: which model, loaded how."""
    p.add_argument("--checkpoint", help="checkpoint folder or hub id (default: $KOSMOS2_CHECKPOINT or the hub model)")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random checkpoint")
    p.add_argument("--dtype", choices=DTYPES, help="default: $KOSMOS2_DTYPE, else bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--quantize", choices=INT8_MODES, help="the experimental int8 text decoder (CPU)")


def add_phrase_flag(p: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--phrase`` (``--phrases`` too), one phrase each."""
    p.add_argument("--phrase", "--phrases", dest="phrases", action="append", default=[], metavar="PHRASE", help=help)


def model_holder(args: argparse.Namespace, fallback: bool = True) -> ModelHolder:
    """The model the flags of :func:`add_model_flags` ask for (checked, not loaded)."""
    if args.tiny and args.checkpoint:
        raise UsageError("give --tiny or --checkpoint, not both")
    return ModelHolder(args.checkpoint, dtype=args.dtype, force_tiny=args.tiny, quantize=args.quantize,
                       fallback=fallback)


def refuse(flags: Sequence[str], task: Task) -> None:
    """:class:`UsageError` when any of ``flags`` (those given that do not apply to ``task``) is there."""
    if flags:
        raise UsageError(f"{', '.join(flags)} does not apply to --task {task.name}")


def setting_flags(args: argparse.Namespace, task: Task) -> Any:
    """The task's settings from the setting flags given (those of :func:`add_setting_flags`), checked;
    :class:`UsageError` naming the flags that are not settings of ``task`` or a value out of its range."""
    given = {name: getattr(args, name) for name in (*SETTINGS, *DETECTION_SETTINGS) if getattr(args, name) is not None}
    refuse([flag(name) for name in given if name not in task.settings.spec()], task)
    try:
        return task.settings.from_user(called=flag, **given)
    except InputError as e:
        raise UsageError(str(e).rstrip(".")) from e


PHRASE_TASKS = tuple(name for name, t in TASKS.items() if t.text == "Phrases")  # their text: a phrase a line


def parser() -> argparse.ArgumentParser:
    """The command line's arguments: the task table's tasks and one flag per generation setting."""
    p = OneLineParser(prog=program(), description="Run a KOSMOS-2 task on an image.",
                      epilog=f"Also: {program()} label DIR ... labels a folder (COCO, YOLO or JSONL; see {program()} "
                             f"label --help), and {program()} selfcheck checks the real checkpoint against recorded "
                             f"outputs (see {program()} selfcheck --help).")
    p.add_argument("image", help="image file")
    p.add_argument("--task", choices=list(TASKS), default="caption",
                   help=" ".join(f"{t.name} ({t.title}): {t.description.rstrip('.')}." for t in TASKS.values()))
    p.add_argument("--text", action="append", default=[], help=" ".join(
        f"{t.name}: {t.text}" + (f" ({t.text_info.rstrip('.')})" if t.text_info else "") + "."
        for t in TASKS.values() if t.text))
    add_phrase_flag(p, f"a phrase (repeatable), for {', '.join(PHRASE_TASKS)}; the same as one phrase a line in --text")
    p.add_argument("--box", action="append", default=[], metavar="x1,y1,x2,y2",
                   help="a box in pixels (repeatable), for " + ", ".join(
                       f"{t.name} ({t.boxes})" for t in TASKS.values() if t.boxes != "none"))
    p.add_argument("--no-grounding", action="store_true", help="no <grounding> tag, for " + ", ".join(
        t.name for t in TASKS.values() if t.grounding_option))
    p.add_argument("--out", help="write the annotated image (PNG) here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_flags(p)
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
        settings = setting_flags(args, task)
        text = _text(args, task)
        if task.boxes == "required" and not args.box:
            raise UsageError(f"--task {args.task} needs a box: give --box x1,y1,x2,y2 (in pixels)")
        holder = model_holder(args)
        request = build_request(args.task, args.image, text, ";".join(args.box), not args.no_grounding)
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


def _text(args: argparse.Namespace, task: Task) -> str | None:
    """The task's text from ``--text`` or ``--phrase``; :class:`UsageError` for a flag the task does not take."""
    refuse([f for f, given, used in (
        ("--text", args.text, task.text), ("--phrase", args.phrases, task.name in PHRASE_TASKS),
        ("--box", args.box, task.boxes != "none"), ("--no-grounding", args.no_grounding, task.grounding_option),
    ) if given and not used], task)
    if len(args.text) > 1:
        raise UsageError("--text is given more than once; for several phrases repeat --phrase")
    if args.text and args.phrases:
        raise UsageError("give --text or --phrase, not both")
    return "\n".join(args.phrases) if args.phrases else (args.text[0] if args.text else None)


if __name__ == "__main__":
    sys.exit(main())
