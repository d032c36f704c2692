"""Benchmark kosmos2 against the reference implementation, side by side.

    python -m benchmarks.run                      # full-size random checkpoint, float32 + bfloat16
    python -m benchmarks.run --size tiny --reps 1 --new-tokens 4   # smoke run

Builds the checkpoint once (random weights in the hub layout) in ``--cache``, then runs each
measurement in its own process, alternating ours and the reference (A B A B …), and prints a
markdown table of medians with the ratio ours / reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from kosmos2.config import Kosmos2Config
from kosmos2.tiny import write_tiny_checkpoint

IMPLS = ("ours", "reference")
METRICS = (
    ("load_s", "load (s)"),
    ("load_peak_rss_gb", "load peak RSS (GB)"),
    ("prefill_s", "prefill: image + prompt, first token (s)"),
    ("decode_ms_per_token", "decode, batch 1 (ms/token)"),
    ("e2e_s", "grounded caption end to end (s)"),
)


def ensure_checkpoint(cache: Path, size: str) -> Path:
    """The benchmark checkpoint for ``size`` ('full' or 'tiny'), written once."""
    folder = cache / f"kosmos2-{size}"
    if not (folder / "model.safetensors").is_file():
        print(f"writing the {size} random checkpoint to {folder} (once) …", file=sys.stderr, flush=True)
        config = Kosmos2Config() if size == "full" else None
        write_tiny_checkpoint(folder, config=config, std=0.02)
    return folder


def run_worker(impl: str, folder: Path, dtype: str, new_tokens: int, repeats: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.worker", "--impl", impl, "--checkpoint", str(folder),
           "--dtype", dtype, "--new-tokens", str(new_tokens), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}"


def table(results: dict[tuple[str, str], list[dict[str, float]]], dtypes: list[str]) -> str:
    lines = ["| dtype | metric | ours | reference | ours / reference |", "|---|---|---|---|---|"]
    for dtype in dtypes:
        for key, label in METRICS:
            ours = statistics.median(r[key] for r in results[(dtype, "ours")])
            ref = statistics.median(r[key] for r in results[(dtype, "reference")])
            lines.append(f"| {dtype} | {label} | {ours:.3g} | {ref:.3g} | {ours / ref:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--reps", type=int, default=2, help="processes per implementation and dtype (A B A B …)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process (median)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    args = parser.parse_args(argv)

    folder = ensure_checkpoint(args.cache, args.size)
    dtypes = args.dtypes.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for dtype in dtypes:
        for rep in range(args.reps):
            for impl in IMPLS:
                print(f"{dtype} {impl} run {rep + 1}/{args.reps} …", file=sys.stderr, flush=True)
                result = run_worker(impl, folder, dtype, args.new_tokens, args.repeats)
                results.setdefault((dtype, impl), []).append(result)
    report = f"Machine: {machine()}; checkpoint: {args.size}-size random weights; {args.new_tokens} new tokens.\n\n"
    report += table(results, dtypes)
    print(report)
    return report


if __name__ == "__main__":
    main()
