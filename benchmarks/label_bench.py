"""Throughput of ``python -m kosmos2 label``: images/s labelling N images with batching (several images share
each decode step) against one image at a time, and optionally the Ray path's overhead on this machine.

    python -m benchmarks.label_bench --size tiny --images 8            # smoke run
    python -m benchmarks.label_bench --size full --dtype bfloat16      # the issue's measurement (16 images, detect)
    python -m benchmarks.label_bench --size tiny --ray                 # also the Ray engine, one actor

The checkpoint is ``benchmarks.run``'s (random weights, written once in ``--cache``). The images are
photo-sized noise (their content does not change the cost). Each mode labels images of its own (none has
been seen by the model's image prefix cache) with the same model in this process (loaded once; one warm-up
image runs first). The model-only rows (``detect``) time the labeller's model calls on images decoded beforehand,
one per call and ``MAX_BATCH_SIZE`` per call: whether batching makes an image cheaper to the model itself.
The Ray mode runs the whole engine (start Ray, one actor loading its own model, label, stop), so its
overhead includes all that. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import ensure_checkpoint
from benchmarks.worker import test_image
from kosmos2.demo.loading import MAX_BATCH_SIZE, ModelHolder
from kosmos2.demo.settings import GenerationSettings
from kosmos2.cli.label.work import LABEL_TASKS, Labeller, Plan, chunks, decode, label_files
from kosmos2.demo.tasks import TASKS

CACHE = Path(__file__).resolve().parent / "cache"


def _rate(labeller: Labeller, folder: Path, files: list[str]) -> float:
    start = time.perf_counter()
    records = list(label_files(labeller, folder, files))
    seconds = time.perf_counter() - start
    assert len(records) == len(files) and not any("failed" in r for r in records)
    return len(files) / seconds


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print its JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint folder instead of --size's")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: ModelHolder's)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--task", choices=LABEL_TASKS, default="detect")
    p.add_argument("--phrases", action="append", default=None, help="default: one phrase, 'a dog'")
    p.add_argument("--new-tokens", type=int, default=32, help="max new tokens for ground and caption")
    p.add_argument("--ray", action="store_true", help="also time the Ray engine with one actor")
    args = p.parse_args(argv)

    checkpoint = args.checkpoint or ensure_checkpoint(args.cache, args.size)
    task = TASKS[args.task]
    settings = GenerationSettings(max_new_tokens=args.new_tokens) if task.settings is GenerationSettings else task.settings()
    plan = Plan.make(args.task, [] if args.task == "caption" else args.phrases or ["a dog"], settings)
    holder = ModelHolder(str(checkpoint), dtype=args.dtype)
    loaded = holder.get()  # (a named checkpoint: an error, never the tiny fallback)
    result: dict[str, object] = {"checkpoint": str(checkpoint), "dtype": str(holder.dtype), "task": args.task,
                                 "phrases": list(plan.phrases), "images": args.images}
    with tempfile.TemporaryDirectory(prefix="kosmos2-label-bench-") as tmp:
        folder = Path(tmp)
        seeds = itertools.count()

        def fresh(n: int) -> list[str]:  # images no earlier mode has seen
            names = []
            for seed in itertools.islice(seeds, n):
                names.append(f"image{seed:06d}.png")
                test_image(seed=seed).save(folder / names[-1])
            return names

        one_by_one, batching = Labeller(loaded, plan, one_at_a_time=True), Labeller(loaded, plan)
        list(label_files(batching, folder, fresh(1)))
        one = _rate(one_by_one, folder, fresh(args.images))
        batched = _rate(batching, folder, fresh(args.images))
        result.update(one_at_a_time_images_per_s=round(one, 3), batched_images_per_s=round(batched, 3),
                      batched_over_one=round(batched / one, 2))
        if task.mode.batches_images:  # the other tasks label one image per call in both modes
            for name, labeller in (("one_per_call", one_by_one), ("batched", batching)):
                items = [decode(folder, f, plan) for f in fresh(args.images)]
                start = time.perf_counter()
                for chunk in chunks(items, labeller.images_per_call):
                    labeller.label(chunk)
                result[f"model_only_{name}_s_per_image"] = round((time.perf_counter() - start) / len(items), 3)
        if args.ray:
            from kosmos2.cli.label.ray_engine import Cluster, ModelSpec, label_with_ray

            files = fresh(args.images)
            start = time.perf_counter()
            records = list(label_with_ray(plan, ModelSpec(str(checkpoint), args.dtype, None), folder, files,
                                          Cluster(workers=1), images_per_batch=MAX_BATCH_SIZE))
            seconds = time.perf_counter() - start
            assert len(records) == len(files)
            result.update(ray_one_worker_s=round(seconds, 2),
                          ray_overhead_s=round(seconds - len(files) / batched, 2))
    holder.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
