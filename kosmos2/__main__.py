"""Command line: ``python -m kosmos2 IMAGE [--task ...] [--text ...] [--box x1,y1,x2,y2 ...]``.

Prints the caption and entities (or JSON with ``--json``) and writes the annotated image with
``--out``, drawn by the same code as the app's download.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import draw, tasks


def main(argv: list[str] | None = None) -> int:
    """Run one task on one image; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m kosmos2", description="Run a KOSMOS-2 task on an image.")
    parser.add_argument("image", help="image file")
    parser.add_argument("--task", choices=list(tasks.TASKS), default="caption",
                        help="; ".join(f"{t.name}: {t.description}" for t in tasks.TASKS.values()))
    parser.add_argument("--text", help="phrases (ground; one per line), question (ask) or prompt (prompt)")
    parser.add_argument("--box", action="append", default=[], metavar="x1,y1,x2,y2",
                        help="a box in pixels (repeatable): refer, ask and prompt")
    parser.add_argument("--no-grounding", action="store_true", help="prompt task: no <grounding> tag")
    parser.add_argument("--out", help="write the annotated image (PNG) here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--checkpoint", help="checkpoint folder or hub id (default: $KOSMOS2_CHECKPOINT or the hub model)")
    parser.add_argument("--tiny", action="store_true", help="use the built-in tiny random checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="1 to %d" % tasks.MAX_NEW_TOKENS_CAP)
    parser.add_argument("--decoding", choices=tasks.DECODING, default="greedy")
    args = parser.parse_args(argv)

    try:
        request = tasks.build_request(args.task, args.image, args.text, ";".join(args.box), not args.no_grounding)
        settings = tasks.GenerationSettings.from_user(max_new_tokens=args.max_new_tokens, decoding=args.decoding)
    except tasks.InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loaded = tasks.ModelHolder(args.checkpoint, force_tiny=args.tiny).get()
    if loaded.is_tiny:
        print("warning: tiny checkpoint with random weights: outputs are random"
              + (f" ({loaded.note})" if loaded.note else ""), file=sys.stderr)
    result = tasks.run_to_end(loaded, request, settings)
    if args.out:
        draw.annotate(request.image, result.annotations()).save(args.out, format="PNG")
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
