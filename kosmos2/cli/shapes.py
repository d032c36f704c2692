"""``python -m kosmos2 shapes DIR --count N --seed S``: write a synthetic grounding data set (coloured
shapes with their true boxes) as images, a label journal, a COCO file, referring expressions and grounded
texts, each ready for ``train``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..demo.loading import progress
from ..errors import UserError
from ..training.shapes import MOST_SHAPES, write_dataset
from . import common


def parser() -> common.OneLineParser:
    p = common.OneLineParser(
        prog=f"{common.program()} shapes",
        description="Write synthetic scenes of coloured circles, squares and triangles with their true boxes.",
    )
    p.add_argument("folder", type=Path, help="a new (or empty) folder to write")
    p.add_argument("--count", type=int, default=100, help="how many scenes (default 100)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same files (default 0)")
    p.add_argument("--exif-share", type=float, default=0.15, help="the share stored turned, with an EXIF orientation")
    p.add_argument(
        "--max-shapes", type=int, default=MOST_SHAPES, help=f"shapes per scene: 1 to this (default {MOST_SHAPES})"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kosmos2 shapes ...``; returns the exit status (2: a bad command, nothing written)."""
    try:
        args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
        if args.count < 1:
            raise common.UsageError(f"--count must be at least 1, got {args.count}")
        if not 1 <= args.max_shapes <= MOST_SHAPES:
            raise common.UsageError(f"--max-shapes must be 1 to {MOST_SHAPES}, got {args.max_shapes}")
        if not 0 <= args.exif_share <= 1:
            raise common.UsageError(f"--exif-share must be in [0, 1], got {args.exif_share}")
        if args.folder.exists() and (not args.folder.is_dir() or any(args.folder.iterdir())):
            raise common.UsageError(f"{args.folder} exists and is not an empty folder; give a new one")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = write_dataset(args.folder, args.count, args.seed, args.exif_share, args.max_shapes)
    progress(
        f"wrote {counts['images']} scenes with {counts['shapes']} shapes, {counts['expressions']} referring "
        f"expressions and {counts['texts']} texts to {args.folder}: images/, labels.jsonl, coco.json, "
        "refexp.jsonl, grounded.jsonl"
    )
    return 0
