"""One serving measurement process (ours only): the prefix cache's time to first token, and the
throughput of concurrent requests through the batcher against one at a time.

Run by ``benchmarks.run``; prints one JSON line.

- TTFT: processor + ``Engine.generate`` with one new token. Cold: an image the cache has not seen;
  cached: a second prompt (the detailed caption) on an image whose prefix is cached.
- Throughput: ``concurrency`` grounded-caption requests on different images, ``new_tokens`` each
  (``min_new_tokens`` too, so random weights cannot stop early), preprocessed beforehand, with a cold
  prefix cache: one at a time through the engine, then all submitted at once from their own threads
  to a ``Batcher``. Beside it, the decode ms/token that a user sees: alone (the streamer clock of each
  lone request) and batched (between a batched user's first and last token), medians over users.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import torch

from benchmarks.worker import PROMPT, StepClock, load_ours, report, test_image, worker_parser
from kosmos2.serving import Batcher, Engine

SECOND_PROMPT = "<grounding> Describe this image in detail:"


def measure_serving(folder: Path, dtype_name: str, new_tokens: int, repeats: int,
                    concurrency: int) -> dict[str, float]:
    dtype = getattr(torch, dtype_name)
    model, processor = load_ours(folder, dtype)
    engine = Engine(model)
    images = iter(test_image(seed=seed) for seed in range(1, 1_000_000))  # a new image per cold request

    def inputs(prompt: str, image) -> dict[str, torch.Tensor]:
        batch = processor(text=prompt, images=image, return_tensors="pt")
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        return dict(batch)

    def first_token(prompt: str, image) -> float:
        start = time.perf_counter()
        engine.generate(**inputs(prompt, image), max_new_tokens=1)
        return time.perf_counter() - start

    first_token(PROMPT, next(images))  # warm-up
    cold, cached = [], []
    for _ in range(repeats):
        image = next(images)
        cold.append(first_token(PROMPT, image))
        cached.append(first_token(SECOND_PROMPT, image))

    decoding = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    engine.prefixes.clear()
    requests = [inputs(PROMPT, next(images)) for _ in range(concurrency)]
    alone: list[float] = []  # each lone user's decode ms/token
    start = time.perf_counter()
    for batch in requests:
        clock = StepClock()
        engine.generate(**batch, **decoding, streamer=clock)
        alone.append(clock.ms_per_step())
    one_at_a_time_s = time.perf_counter() - start

    engine.prefixes.clear()
    requests = [inputs(PROMPT, next(images)) for _ in range(concurrency)]
    batcher = Batcher(engine, max_batch_size=concurrency)
    results: list[list[int]] = [[] for _ in range(concurrency)]
    batched: list[float] = [0.0] * concurrency  # each batched user's ms between its first and last token
    ready = threading.Barrier(concurrency + 1)

    def user(i: int) -> None:
        batch = requests[i]
        ready.wait()
        stream = batcher.submit(batch["pixel_values"][0], batch["input_ids"][0],
                                batch["image_embeds_position_mask"][0], **decoding)
        clock = StepClock()
        clock.put(None)  # StepClock counts from its second put: the prompt's place
        for token in stream:
            clock.put(token)
            results[i].append(token)
        batched[i] = clock.ms_per_step()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    concurrent_s = time.perf_counter() - start
    batcher.close()
    assert all(len(r) == new_tokens for r in results), "a batched request stopped early"
    assert batcher.batch_sizes == [concurrency], f"the requests ran as batches {batcher.batch_sizes}"
    tokens = concurrency * new_tokens
    return {
        "ttft_cold_s": statistics.median(cold),
        "ttft_cached_s": statistics.median(cached),
        "one_at_a_time_tokens_per_s": tokens / one_at_a_time_s,
        "concurrent_tokens_per_s": tokens / concurrent_s,
        "alone_ms_per_token": statistics.median(alone),
        "batched_ms_per_token": statistics.median(batched),
    }


def main(argv: list[str] | None = None) -> None:
    parser = worker_parser()
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    report(measure_serving, args.checkpoint, args.dtype, args.new_tokens, args.repeats, args.concurrency)


if __name__ == "__main__":
    main()
