"""Benchmark kosmos2 against the reference implementation, side by side.

    python -m benchmarks.run                      # full-size random checkpoint, float32 + bfloat16
    python -m benchmarks.run --size tiny --reps 1 --new-tokens 4   # smoke run
    python -m benchmarks.run --serving only       # only the serving table (ours)
    python -m benchmarks.run --modes int8         # also ours in int8 mode against the reference's bfloat16

Builds the checkpoint once (random weights in the hub layout) in ``--cache``, then runs each
measurement in its own process, alternating ours and the reference (A B A B …), and prints a
markdown table of medians with the ratio ours / reference. A second table (ours only, see
``benchmarks.serving_worker``) gives the prefix cache's time to first token for a second prompt on the
same image against a cold prompt, and the throughput of concurrent requests batched against one at a
time, each with its target ratio. ``--modes int8`` adds rows for our experimental int8 mode (text decoder
int8, the rest bfloat16) against the reference's bfloat16, and the share of greedy tokens it shares with
float32 on tiny random checkpoints (its quality cannot be checked without the real weights).
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
    ("first_request_s", "first request after start: load + first token (s)"),
    ("prefill_s", "prefill: image + prompt, first token (s)"),
    ("decode_ms_per_token", "decode, batch 1, streamer clock (ms/token)"),
    ("decode_diff_ms_per_token", "decode, batch 1, (t(N+1 new) - t(1 new)) / N (ms/token)"),
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


def _run_module(module: str, args: list[str]) -> dict[str, float]:
    """Run ``python -m module args`` in a fresh process and return the JSON of its last output line."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_worker(impl: str, folder: Path, dtype: str, new_tokens: int, repeats: int) -> dict[str, float]:
    return _run_module("benchmarks.worker", ["--impl", impl, "--checkpoint", str(folder), "--dtype", dtype,
                                             "--new-tokens", str(new_tokens), "--repeats", str(repeats)])


def run_serving_worker(folder: Path, dtype: str, new_tokens: int, repeats: int, concurrency: int) -> dict[str, float]:
    return _run_module("benchmarks.serving_worker", ["--checkpoint", str(folder), "--dtype", dtype, "--new-tokens",
                                                     str(new_tokens), "--repeats", str(repeats),
                                                     "--concurrency", str(concurrency)])


def serving_table(results: dict[str, list[dict[str, float]]], concurrency: int, judged: bool = True) -> str:
    """The serving runs per dtype: medians of baseline and ours, and the median of the runs' own ratios
    (each run measures both sides in one process, minutes apart at most), each run's ratio after it when
    there are several, and whether the target is met (``judged``; a tiny checkpoint's ratios say nothing
    about the targets: "n/a")."""
    lines = ["| serving (ours) | baseline | with cache / batching | ratio (per run) | target |",
             "|---|---|---|---|---|"]
    metrics = (
        ("time to first token (s): cold prompt; second prompt on the same image",
         "ttft_cold_s", "ttft_cached_s", "<= 0.3", lambda ratio: ratio <= 0.3),
        (f"throughput (tokens/s): {concurrency} grounded captions one at a time; concurrent, batched",
         "one_at_a_time_tokens_per_s", "concurrent_tokens_per_s", ">= 2.5", lambda ratio: ratio >= 2.5),
    )
    for dtype, runs in results.items():
        for label, base_key, ours_key, target, meets in metrics:
            base = statistics.median(r[base_key] for r in runs)
            ours = statistics.median(r[ours_key] for r in runs)
            ratios = [r[ours_key] / r[base_key] for r in runs]
            ratio = statistics.median(ratios)
            each = f" ({', '.join(f'{x:.2f}' for x in ratios)})" if len(ratios) > 1 else ""
            verdict = f"{target} {'met' if meets(ratio) else 'NOT met'}" if judged else "n/a (tiny checkpoint)"
            lines.append(f"| {dtype}: {label} | {base:.3g} | {ours:.3g} | {ratio:.2f}{each} | {verdict} |")
        alone = statistics.median(r["alone_ms_per_token"] for r in runs)
        batched = statistics.median(r["batched_ms_per_token"] for r in runs)
        lines.append(f"| {dtype}: decode (ms/token) a user sees: alone; each of {concurrency} batched users | "
                     f"{alone:.3g} | {batched:.3g} | {batched / alone:.2f} | (none) |")
    return "\n".join(lines)


MODE_BASE_DTYPE = {"int8": "bfloat16"}  # each extra mode of ours, and the reference dtype it is compared with


def modes_table(results: dict[tuple[str, str], list[dict[str, float]]], modes: list[str]) -> str:
    """Rows for our extra modes: ours in the mode against the reference in the mode's base dtype."""
    lines = ["| mode (ours) | metric | ours | reference | ours / reference |", "|---|---|---|---|---|"]
    for mode in modes:
        base = MODE_BASE_DTYPE[mode]
        for key, label in METRICS:
            ours = statistics.median(r[key] for r in results[(base, f"ours-{mode}")])
            ref = statistics.median(r[key] for r in results[(base, "reference")])
            lines.append(f"| {mode} vs reference {base} | {label} | {ours:.3g} | {ref:.3g} | {ours / ref:.2f} |")
    return "\n".join(lines)


def int8_agreement(cache: Path, seeds: tuple[int, ...] = (0, 1, 2), new_tokens: int = 24) -> tuple[float, int]:
    """Share of greedy tokens that the int8 mode shares with float32, position by position, on tiny random
    checkpoints (one per seed, three prompts each); returns (share, tokens compared)."""
    from benchmarks.worker import test_image
    from kosmos2 import Kosmos2ForConditionalGeneration, Kosmos2Processor

    same = total = 0
    for seed in seeds:
        folder = cache / f"kosmos2-tiny-seed{seed}"
        if not (folder / "model.safetensors").is_file():
            write_tiny_checkpoint(folder, seed=seed)
        processor = Kosmos2Processor.from_pretrained(folder)
        plain = Kosmos2ForConditionalGeneration.from_pretrained(folder)
        int8 = Kosmos2ForConditionalGeneration.from_pretrained(folder, quantize="int8")
        for prompt in ("<grounding>An image of", "<grounding> Describe this image in detail:",
                       "<grounding> Question: What is special about this image? Answer:"):
            inputs = processor(text=prompt, images=test_image(), return_tensors="pt")
            args = dict(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                        attention_mask=inputs["attention_mask"],
                        image_embeds_position_mask=inputs["image_embeds_position_mask"],
                        max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            start = inputs["input_ids"].shape[1]
            a, b = plain.generate(**args)[0, start:], int8.generate(**args)[0, start:]
            same += int((a == b).sum())
            total += a.numel()
    return same / total, total


# CPU features that decide which kernels run (oneDNN, bfloat16 dot products, AMX tiles), by /proc/cpuinfo flag
CPU_FEATURES = (("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512-BF16"), ("amx_tile", "AMX"))


def cpu_features(flags: set[str]) -> str:
    """The kernel-deciding features among ``flags``: e.g. "AVX-512, AVX-512-BF16, AMX", or "AVX2 only"."""
    found = [name for flag, name in CPU_FEATURES if flag in flags]
    if found:
        return ", ".join(found)
    return "AVX2 only" if "avx2" in flags else "no AVX2"


def machine() -> str:
    """One line: the CPU and its kernel-deciding features, cores, torch, MKL's reproducibility mode (see the
    docs/labelling.md's "Same numbers on every engine"; both implementations' processes inherit it) and Python."""
    cpu, flags = None, set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():  # the first processor's lines
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu is None:
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    cpu = cpu or platform.processor() or platform.machine()
    features = f" ({cpu_features(flags)})" if flags else ""
    return (f"{cpu}{features}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"MKL_CBWR={os.environ.get('MKL_CBWR') or 'unset'}, Python {platform.python_version()}")


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
    parser.add_argument("--serving", choices=("with", "skip", "only"), default="with",
                        help="the serving table (ours: prefix cache, batching): with the comparison, skip it, or only it")
    parser.add_argument("--modes", default="", help=f"extra modes of ours, comma-separated: {sorted(MODE_BASE_DTYPE)}")
    parser.add_argument("--serving-dtypes", default="float32,bfloat16")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent requests of the serving benchmark")
    args = parser.parse_args(argv)

    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in MODE_BASE_DTYPE:
            parser.error(f"unknown mode {mode!r} (choose from {sorted(MODE_BASE_DTYPE)})")
    folder = ensure_checkpoint(args.cache, args.size)
    dtypes = args.dtypes.split(",") if args.serving != "only" else []
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for dtype in dtypes:
        for rep in range(args.reps):
            for impl in IMPLS:
                print(f"{dtype} {impl} run {rep + 1}/{args.reps} …", file=sys.stderr, flush=True)
                result = run_worker(impl, folder, dtype, args.new_tokens, args.repeats)
                results.setdefault((dtype, impl), []).append(result)
    for mode in modes:
        base = MODE_BASE_DTYPE[mode]
        impls = [f"ours-{mode}"] + (["reference"] if base not in dtypes else [])
        for rep in range(args.reps):
            for impl in impls:
                print(f"{mode} ({base}) {impl} run {rep + 1}/{args.reps} …", file=sys.stderr, flush=True)
                result = run_worker(impl, folder, base, args.new_tokens, args.repeats)
                results.setdefault((base, impl), []).append(result)
    report = f"Machine: {machine()}; checkpoint: {args.size}-size random weights; {args.new_tokens} new tokens.\n\n"
    if dtypes:
        report += table(results, dtypes)
    if modes:
        report += ("\n\n" if dtypes else "") + modes_table(results, modes)
        if "int8" in modes:
            share, count = int8_agreement(args.cache)
            report += (f"\n\nint8 agreement with float32 (greedy, tiny random checkpoints): {share:.1%} of "
                       f"{count} tokens identical")
    if args.serving != "skip":
        serving: dict[str, list[dict[str, float]]] = {}
        for dtype in args.serving_dtypes.split(","):
            for rep in range(args.reps):
                print(f"{dtype} serving run {rep + 1}/{args.reps} …", file=sys.stderr, flush=True)
                result = run_serving_worker(folder, dtype, args.new_tokens, args.repeats, args.concurrency)
                serving.setdefault(dtype, []).append(result)
        report += "\n\n" if dtypes else ""
        report += serving_table(serving, args.concurrency, judged=args.size == "full")
    print(report)
    return report


if __name__ == "__main__":
    main()
