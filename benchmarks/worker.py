"""One measurement process: load a checkpoint with one implementation and time it.

Run by ``benchmarks.run``; prints one JSON line. Each run is a fresh process so that load
time and peak memory are not disturbed by earlier runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from kosmos2.image_processing import CLIP_MEAN, CLIP_STD

PROMPT = "<grounding>An image of"


def test_image(size: int = 480, seed: int = 0) -> Image.Image:
    """A deterministic, photo-sized RGB image (the content does not change the cost)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8))


def load_ours(folder: Path, dtype: torch.dtype, quantize: str | None = None) -> tuple[Any, Any]:
    from kosmos2 import Kosmos2ForConditionalGeneration, Kosmos2Processor

    model = Kosmos2ForConditionalGeneration.from_pretrained(folder, dtype=dtype, quantize=quantize)
    return model, Kosmos2Processor.from_pretrained(folder)


def load_reference(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from tokenizers import Tokenizer
    from transformers import CLIPImageProcessor, XLMRobertaTokenizer
    from transformers import Kosmos2ForConditionalGeneration, Kosmos2Processor

    model = Kosmos2ForConditionalGeneration.from_pretrained(folder, dtype=dtype)
    model.eval()
    size = model.config.vision_config.image_size
    tokenizer = XLMRobertaTokenizer(tokenizer_object=Tokenizer.from_file(str(folder / "tokenizer.json")))
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"height": size, "width": size}, do_center_crop=False, resample=3,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    return model, Kosmos2Processor(image_processor, tokenizer)


LOADERS: dict[str, Callable[[Path, torch.dtype], tuple[Any, Any]]] = {
    "ours": load_ours,
    "reference": load_reference,
    "ours-int8": lambda folder, dtype: load_ours(folder, dtype, quantize="int8"),
}


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class StepClock:
    """A streamer (``put``/``end``, as both implementations call it) that records when each put came:
    the prompt first, then one put per generated token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, ids: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def ms_per_step(self) -> float:
        """Mean time between the first and the last generated token, per token."""
        steps = self.times[1:]
        return 1000 * (steps[-1] - steps[0]) / (len(steps) - 1)


def measure(impl: str, folder: Path, dtype_name: str, new_tokens: int, repeats: int) -> dict[str, float]:
    dtype = getattr(torch, dtype_name)
    start = time.perf_counter()
    model, processor = LOADERS[impl](folder, dtype)
    load_s = time.perf_counter() - start
    load_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    image = test_image()

    def run(n: int, streamer: StepClock | None = None) -> str:
        inputs = processor(text=PROMPT, images=image, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(
                pixel_values=inputs["pixel_values"].to(dtype),
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                image_embeds=None,
                image_embeds_position_mask=inputs["image_embeds_position_mask"],
                use_cache=True,
                max_new_tokens=n,
                min_new_tokens=n,
                streamer=streamer,
            )
        assert ids.shape[1] == inputs["input_ids"].shape[1] + n, "generation stopped early"
        text = processor.batch_decode(ids, skip_special_tokens=True)[0]
        processor.post_process_generation(text)
        return text

    first_s = timed(lambda: run(1), 1)  # the first request after start pays what loading deferred
    run(2)  # warm-up
    prefill_s = timed(lambda: run(1), repeats)
    clock = StepClock()
    e2e_s = timed(lambda: run(new_tokens + 1, clock), 1)
    return {
        "load_s": load_s,
        "load_peak_rss_gb": load_rss_gb,
        "first_request_s": load_s + first_s,
        "prefill_s": prefill_s,
        "decode_ms_per_token": clock.ms_per_step(),
        "decode_diff_ms_per_token": 1000 * (e2e_s - prefill_s) / new_tokens,
        "e2e_s": e2e_s,
    }


def worker_parser() -> argparse.ArgumentParser:
    """The flags every benchmark worker takes: the checkpoint, its dtype, the new tokens and the repeats."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def report(measure_fn: Callable[..., dict[str, Any]], *args: Any) -> None:
    """Seed torch, run ``measure_fn(*args)`` and print its result as one JSON line (what run.py reads)."""
    torch.manual_seed(0)
    json.dump(measure_fn(*args), sys.stdout)
    print()


def main(argv: list[str] | None = None) -> None:
    parser = worker_parser()
    parser.add_argument("--impl", choices=sorted(LOADERS), required=True)
    args = parser.parse_args(argv)
    report(measure, args.impl, args.checkpoint, args.dtype, args.new_tokens, args.repeats)


if __name__ == "__main__":
    main()
