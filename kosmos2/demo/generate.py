"""Generating tasks (captions, grounding, questions, prompts): the request's rows through the model's
batcher, streamed as partial results, each row decoded and parsed again only when it has new tokens."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import closing

from .. import grounding
from .loading import LoadedModel
from .mode import Mode
from .request import TaskRequest
from .results import ParsedRow, TaskResult, merge_rows, parse_row
from .settings import GenerationSettings


def stream_generation(
    loaded: LoadedModel,
    request: TaskRequest,
    settings: GenerationSettings,
    min_interval_s: float = 0.05,
    partial: bool = True,
) -> Iterator[TaskResult | None]:
    """Generate for ``request``, yielding partial results while tokens arrive and the final one last
    (without ``partial``, None in their place: nothing is decoded until the end).

    The rows go to the model's batcher (decoded together with other users' waiting rows, the image
    prefix cached); partial results are yielded every ``min_interval_s`` seconds at most, and (for a
    positive, finite ``min_interval_s``) at least, while tokens are awaited, as with beam search, which
    gives its tokens at the end. A generation error is raised here. Closing the iterator early (a client
    that went away) drops the rows from their batch at its next step (beam search stops too).
    """
    from ..serving import follow  # model code loads with the model, not with the app (see ModelHolder._from)

    processor = loaded.processor
    n = len(request.prompts)
    batch = processor(text=list(request.prompts), images=[request.image] * n, return_tensors="pt", padding=True)
    prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    locations = set(loaded.location_ids)
    image_end = processor.tokenizer.convert_tokens_to_ids("</image>")
    parsed: list[tuple[int, ParsedRow] | None] = [None] * n  # per row: (new tokens, its parse)

    def row(i: int, new: Sequence[int], logprobs: Sequence[float]) -> ParsedRow:
        if (known := parsed[i]) is not None and known[0] == len(new):
            return known[1]
        ids = prompt_ids[i] + list(new)
        scores = grounding.location_logprobs(
            ids, [None] * len(prompt_ids[i]) + list(logprobs[: len(new)]), locations, image_end
        )
        fresh = parse_row(processor.decode(ids, skip_special_tokens=True), request.image.size, scores)
        parsed[i] = (len(new), fresh)
        return fresh

    def result(new_ids: list[list[int]], seconds: float, first: float | None, done: bool) -> TaskResult:
        out = merge_rows(request, [row(i, q, s.logprobs) for i, (q, s) in enumerate(zip(new_ids, streams))], done)
        out.new_tokens, out.seconds, out.first_token_s = max(map(len, new_ids)), seconds, first
        return out

    start = time.perf_counter()
    first: float | None = None
    new_ids: list[list[int]] = [[] for _ in range(n)]
    last_yield = 0.0
    tick = min_interval_s if 0 < min_interval_s < math.inf else None  # partial results even without new tokens
    streams = loaded.batcher.submit_batch(**batch, **settings.generate_kwargs())
    with closing(follow(streams, tick)) as steps:
        for new_ids in steps:
            now = time.perf_counter()
            if first is None and settings.streams and any(new_ids):
                first = now - start
            if now - last_yield >= min_interval_s:
                last_yield = now
                yield result(new_ids, now - start, first, done=False) if partial else None
    yield result(new_ids, time.perf_counter() - start, first, done=True)


def generate_each(
    loaded: LoadedModel, requests: Sequence[TaskRequest], settings: GenerationSettings
) -> list[TaskResult]:
    """The final result of each request, one after another (without partial results)."""
    return [_last(stream_generation(loaded, r, settings, math.inf, partial=False)) for r in requests]


def _last(results: Iterator[TaskResult | None]) -> TaskResult:
    *_, final = results
    assert final is not None  # (the last one is the final result)
    return final


GENERATE = Mode(GenerationSettings, stream=stream_generation, many=generate_each)
