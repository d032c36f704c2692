"""``kosmos2 IMAGE [--task ...] [--text ...] [--phrase ...] [--box x1,y1,x2,y2 ...]``: one task on one image.

Prints the caption and entities (or JSON with ``--json``) and writes the annotated image with
``--out``, drawn by the same code as the app's download. Tasks come from the task table and the
generation flags from the settings spec (``kosmos2.demo``).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..demo.draw import annotate
from ..demo.execute import run_tasks
from ..demo.tasks import PHRASES, TASKS, Task, build_request
from ..errors import UserError
from .common import (
    OneLineParser,
    UsageError,
    add_model_flags,
    add_phrase_flag,
    add_settings_groups,
    model_holder,
    program,
    refuse,
    setting_flags,
)

PHRASE_TASKS = tuple(name for name, t in TASKS.items() if t.text == PHRASES)  # their text: a phrase a line


def parser() -> argparse.ArgumentParser:
    """The command line's arguments: the task table's tasks and one flag per generation setting."""
    p = OneLineParser(
        prog=program(),
        description="Run a KOSMOS-2 task on an image.",
        epilog=f"Also: {program()} label DIR ... labels a folder (COCO, YOLO or JSONL; see {program()} "
        f"label --help), {program()} train --data FILE --out DIR fine-tunes on labelled data (see {program()} "
        f"train --help), and {program()} selfcheck checks the real checkpoint against recorded "
        f"outputs (see {program()} selfcheck --help).",
    )
    p.add_argument("image", help="image file")
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default="caption",
        help=" ".join(f"{t.name} ({t.title}): {t.description.rstrip('.')}." for t in TASKS.values()),
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        help=" ".join(
            f"{t.name}: {t.text}" + (f" ({t.text_info.rstrip('.')})" if t.text_info else "") + "."
            for t in TASKS.values()
            if t.text
        ),
    )
    add_phrase_flag(p, f"a phrase (repeatable), for {', '.join(PHRASE_TASKS)}; the same as one phrase a line in --text")
    p.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="x1,y1,x2,y2",
        help="a box in pixels (repeatable), for "
        + ", ".join(f"{t.name} ({t.boxes})" for t in TASKS.values() if t.boxes != "none"),
    )
    p.add_argument(
        "--no-grounding",
        action="store_true",
        help="no <grounding> tag, for " + ", ".join(t.name for t in TASKS.values() if t.grounding_option),
    )
    p.add_argument("--out", help="write the annotated image (PNG) here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_flags(p)
    add_settings_groups(p, "generation settings", "detection settings (--task detect)")
    return p


def main(argv: list[str]) -> int:
    """Run one task on one image; returns the process exit status."""
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
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if loaded.is_tiny:  # (why, when it is the offline fallback, is said once by the loading line above)
        print("warning: tiny checkpoint with random weights: outputs are random", file=sys.stderr)
    [result] = run_tasks(loaded, task, [request], settings)
    holder.close()
    if args.out:
        annotate(request.image, result.annotations()).save(args.out, format="PNG")
    if args.json:
        print(
            json.dumps(
                {
                    "caption": result.caption,
                    "entities": result.entities_json(),
                    "raw": result.raw,
                    "seconds": round(result.seconds, 3),
                    "new_tokens": result.new_tokens,
                },
                indent=2,
            )
        )
    else:
        print(result.caption)
        for entity in result.entities:
            print(f"  {entity.phrase!r} {entity.span}: " + ", ".join(str(b) for b in entity.pixel_boxes))
        print(result.timing_text(), file=sys.stderr)
    return 0


def _text(args: argparse.Namespace, task: Task) -> str | None:
    """The task's text from ``--text`` or ``--phrase``; :class:`UsageError` for a flag the task does not take."""
    refuse(
        [
            f
            for f, given, used in (
                ("--text", args.text, task.text),
                ("--phrase", args.phrases, task.name in PHRASE_TASKS),
                ("--box", args.box, task.boxes != "none"),
                ("--no-grounding", args.no_grounding, task.grounding_option),
            )
            if given and not used
        ],
        task,
    )
    if len(args.text) > 1:
        raise UsageError("--text is given more than once; for several phrases repeat --phrase")
    if args.text and args.phrases:
        raise UsageError("give --text or --phrase, not both")
    return "\n".join(args.phrases) if args.phrases else (args.text[0] if args.text else None)
