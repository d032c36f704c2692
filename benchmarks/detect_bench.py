"""Detect against phrase grounding on the same model, image and phrase, in one process (ours only).

    python -m benchmarks.detect_bench                     # full-size random checkpoint, float32
    python -m benchmarks.detect_bench --dtype bfloat16 --reps 5
    python -m benchmarks.detect_bench --size tiny --reps 2   # smoke run

Each call gets a fresh image (a cold prefix: vision encoder and image prefix included, as for a new
upload), alternating the tasks. Phrase grounding is timed twice: with 4 new tokens (``<object>``, the
two cells, ``</object>``: the least a call needs for its one box) and with the default 128. The target:
detect for one phrase costs at most 1.5x phrase grounding; several phrases share one batched step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from benchmarks.run import ensure_checkpoint, machine
from kosmos2.demo.execute import run_tasks
from kosmos2.demo.loading import ModelHolder
from kosmos2.demo.mode import Settings
from kosmos2.demo.settings import DetectionSettings, GenerationSettings
from kosmos2.demo.tasks import TASKS, build_request

TARGET = 1.5


def _image(k: int) -> Image.Image:
    return Image.effect_noise((224, 224), 40 + k).convert("RGB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    args = p.parse_args()
    holder = ModelHolder(str(ensure_checkpoint(args.cache, args.size)), dtype=args.dtype)
    loaded = holder.get()

    def case(task: str, text: str, settings: Settings) -> Callable[[Image.Image], object]:
        return lambda im: run_tasks(loaded, TASKS[task], [build_request(task, im, text)], settings)

    cases = {
        "ground, 1 phrase, 4 new tokens (one box)": case("ground", "a cup", GenerationSettings(max_new_tokens=4)),
        "ground, 1 phrase, 128 new tokens (default)": case("ground", "a cup", GenerationSettings()),
        "detect, 1 phrase": case("detect", "a cup", DetectionSettings()),
        "detect, 3 phrases": case("detect", "a cup\na spoon\na table", DetectionSettings()),
    }
    cases[next(iter(cases))](_image(0))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    k = 1
    for _ in range(args.reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn(_image(k))
            times[name].append(time.perf_counter() - start)
            k += 1
    holder.close()
    print(machine())
    print(f"checkpoint: {args.size} (random weights), {args.dtype}, {args.reps} reps, a fresh image per call\n")
    print("| case | median (s) | / ground with 4 tokens |")
    print("|---|---|---|")
    base = statistics.median(times[next(iter(cases))])
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {statistics.median(ts) / base:.2f}x |")
    ratio = statistics.median(times["detect, 1 phrase"]) / base
    verdict = "n/a (tiny checkpoint)" if args.size == "tiny" else ("met" if ratio <= TARGET else "NOT met")
    print(f"\ndetect / ground (1 phrase): {ratio:.2f}x, target <= {TARGET}x: {verdict}")


if __name__ == "__main__":
    main()
