"""``python -m kosmos2 eval --data FILE``: KOSMOS-2's accuracy protocols on the files users have (referring
expressions, MDETR's RefCOCO and Flickr30k Entities JSON, a label caption journal, COCO), in one or more
precisions in one process: one table, and ``--json`` for the numbers."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..demo.loading import DTYPES, progress
from ..errors import UserError
from ..evaluation import FORMATS, PROTOCOLS, Benchmark, Score, evaluate, items, read_benchmark
from ..precision import INT8_MODES
from . import common

MODES = (*DTYPES, *INT8_MODES)
SHOWN_PROBLEMS = 5


def parser() -> common.OneLineParser:
    p = common.OneLineParser(
        prog=f"{common.program()} eval",
        description="Score a model with KOSMOS-2's protocols: referring expression comprehension (Acc@0.5), phrase "
        "grounding (R@1/5/10), detection (COCO mAP, AP50) and caption grounding (entity recall).",
    )
    p.add_argument("--data", type=Path, action="append", required=True, help="an evaluation file (repeatable)")
    p.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="its format (default: detected)")
    p.add_argument("--images", type=Path, help="the folder image paths are relative to (default: each file's folder)")
    common.add_model_flags(p, precision=False)
    p.add_argument(
        "--modes",
        default="float32",
        help=f"comma-separated precisions to score, of {', '.join(MODES)} (default float32)",
    )
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated, of " + ", ".join(PROTOCOLS))
    p.add_argument("--limit", type=int, help="the first N items of each protocol of each file")
    p.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    return p


def _choices(value: str, allowed: Sequence[str], flag: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    wrong = [v for v in chosen if v not in allowed]
    if wrong or not chosen:
        raise common.UsageError(f"{flag} takes a comma-separated list of {', '.join(allowed)}; got {value!r}")
    return list(dict.fromkeys(chosen))


def _limited(bench: Benchmark, limit: int | None) -> Benchmark:
    if limit is None:
        return bench
    bench.comprehension, bench.grounding = bench.comprehension[:limit], bench.grounding[:limit]
    bench.captions, bench.coco_images = bench.captions[:limit], bench.coco_images[:limit]
    return bench


def table(results: dict[str, list[tuple[Path, Score]]]) -> str:
    """The scores as one table: a line per file's protocol metric (and its ms per item), a column per mode."""
    modes = list(results)
    rows: list[tuple[str, list[str]]] = []
    for k, (source, first) in enumerate(results[modes[0]]):
        label = f"{source.name} {first.protocol} ({first.count})"
        for metric in first.metrics:
            rows.append((f"{label} {metric}", [f"{results[m][k][1].metrics[metric]:.3f}" for m in modes]))
        rows.append((f"{label} ms per item", [f"{results[m][k][1].ms_per_item:.1f}" for m in modes]))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{m:>9}" for m in modes)]
    lines += [f"{name:{width}}  " + "  ".join(f"{v:>9}" for v in values) for name, values in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kosmos2 eval ...``; returns the exit status (2: a bad command or file, 1: an error while
    scoring)."""
    try:
        args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
        modes = _choices(args.modes, MODES, "--modes")
        protocols = _choices(args.protocols, PROTOCOLS, "--protocols")
        if args.limit is not None and args.limit < 1:
            raise common.UsageError(f"--limit must be at least 1, got {args.limit}")
        benches = []
        for path in args.data:
            bench = _limited(read_benchmark(path, args.images or path.parent, args.format), args.limit)
            if bench.problems:
                shown = "".join(f"\n  {p}" for p in bench.problems[:SHOWN_PROBLEMS])
                progress(f"leaving out {len(bench.problems)} record(s) of {path}:{shown}")
            if not items(bench, protocols):
                raise common.UsageError(f"{path} ({bench.fmt}) has nothing to score for {', '.join(protocols)}")
            benches.append(bench)
        holders = {
            m: common.model_holder(
                args, fallback=False, dtype=None if m in INT8_MODES else m, quantize=m if m in INT8_MODES else None
            )
            for m in modes
        }
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results: dict[str, list[tuple[Path, Score]]] = {}
    total = sum(items(b, protocols) for b in benches)
    try:
        for mode, holder in holders.items():
            loaded = holder.get()
            with tqdm(total=total, desc=mode, unit="item", file=sys.stderr, disable=None) as bar:
                results[mode] = [(b.source, s) for b in benches for s in evaluate(loaded, b, protocols, bar.update)]
            holder.close()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table(results))
    if args.json:
        scores = {m: [{"data": str(src), "protocol": s.protocol, "count": s.count, "ms_per_item": s.ms_per_item,
                       **s.metrics} for src, s in r] for m, r in results.items()}  # fmt: skip
        args.json.write_text(json.dumps({"checkpoint": holders[modes[0]].checkpoint, "modes": scores}, indent=1) + "\n")
    return 0
