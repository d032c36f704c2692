"""Concurrent requests gathered into batches on one worker thread, each row's tokens streamed to its own
:class:`RowStream`."""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .. import generation
from ..generation import DecodingSettings, RowStream
from .engine import Engine
from .rows import Row, check_one_sequence

BATCH_SIZES_KEPT = 1000


class _FanOut:
    """An ``on_step`` callback that gives each row's tokens to its own :class:`RowStream` and ends rows on
    EOS or their own token limit."""

    def __init__(self, streams: Sequence[RowStream], limits: Sequence[int], eos_ids: set[int]) -> None:
        self.streams = streams
        self.limits = limits
        self.eos_ids = eos_ids

    def __call__(self, ids: torch.Tensor, logprobs: torch.Tensor) -> None:
        for stream, limit, token, logprob in zip(self.streams, self.limits, ids.tolist(), logprobs.tolist()):
            if stream.done.is_set():
                continue
            stream.add(token, logprob)
            if token in self.eos_ids or len(stream.tokens) >= limit:
                stream.finish()

    def all_done(self) -> bool:
        """No row takes tokens any more (each ended or was cancelled): the batch can stop."""
        return all(s.done.is_set() for s in self.streams)


@dataclass(eq=False)
class _Request:
    row: Row
    settings: DecodingSettings
    stream: RowStream
    generator: torch.Generator | None
    group: tuple = field(init=False)  # requests of one group may share a batch

    def __post_init__(self) -> None:
        s = self.settings
        # Only max_new_tokens may differ within a batch. Beam search and a private generator run alone,
        # so that their tokens stay those of a lone row.
        alone = s.num_beams > 1 or self.generator is not None
        self.group = (
            (id(self),)
            if alone
            else (
                s.min_new_tokens,
                s.do_sample,
                s.temperature,
                s.top_k,
                s.top_p,
                s.repetition_penalty,
                s.no_repeat_ngram_size,
            )
        )


class Batcher:
    """Runs concurrent requests as batches of up to ``max_batch_size`` rows on one worker thread.

    The worker takes the oldest waiting request, waits up to ``gather_s`` for more that can share its
    batch (same decoding settings; ``max_new_tokens`` may differ), then decodes them together through
    ``engine``. Requests that arrive while a batch runs wait for the next one.

    :meth:`hold` keeps the worker from taking a new batch, and :meth:`wait_pending` waits for queued
    rows: together they make the batches independent of timing (tests, or an operator queueing a
    known set of requests to run together).
    """

    def __init__(self, engine: Engine, max_batch_size: int = 4, gather_s: float = 0.02) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        if not gather_s >= 0:
            raise ValueError(f"gather_s must be >= 0, got {gather_s!r}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.gather_s = gather_s
        self.batch_sizes: list[int] = []  # of the latest batches (at most BATCH_SIZES_KEPT), for tests and monitoring
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._holds = 0  # open hold() blocks: while > 0 the worker takes no new batch
        _BATCHERS.add(self)

    def _after_fork(self) -> None:
        """In a forked child (ZeroGPU runs each call so) only the forking thread exists: the worker is gone
        and the queue's lock may be held by it, so the batcher starts afresh and the child's first request
        starts its own worker. (The prefix cache's lock is taken only by the worker; on ZeroGPU the main
        process never decodes, so no lock is held at a fork.)"""
        self._pending = []
        self._cond = threading.Condition()
        self._worker = None
        self._holds = 0

    def submit(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        image_embeds_position_mask: torch.Tensor,
        max_new_tokens: int | None = None,
        generator: torch.Generator | None = None,
        timeout: float | None = None,
        **decoding: Any,
    ) -> RowStream:
        """Queue one unpadded prompt: (3, S, S) pixels, (T,) ids and (T,) slot mask. Returns its stream
        (``timeout``: seconds the stream's iteration waits for each token). Bad input raises here."""
        row = self.engine.row(pixel_values, input_ids, image_embeds_position_mask)
        return self._enqueue([row], max_new_tokens, generator, timeout, decoding)[0]

    def submit_batch(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        generator: torch.Generator | None = None,
        timeout: float | None = None,
        **decoding: Any,
    ) -> list[RowStream]:
        """Queue each row of a processor batch (left-padded, as for ``model.generate``); one stream per
        row, as :meth:`submit`. Bad input raises here, before anything is queued."""
        rows = self.engine.rows(pixel_values, input_ids, image_embeds_position_mask, attention_mask)
        return self._enqueue(rows, max_new_tokens, generator, timeout, decoding)

    def _enqueue(
        self,
        rows: Sequence[Row],
        max_new_tokens: int | None,
        generator: torch.Generator | None,
        timeout: float | None,
        decoding: dict[str, Any],
    ) -> list[RowStream]:
        settings = DecodingSettings(max_new_tokens=max_new_tokens, **decoding)  # type: ignore[arg-type]  # None: DecodingSettings raises, saying why
        check_one_sequence(settings)
        requests = [_Request(row, settings, RowStream(timeout), generator) for row in rows]
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._pending.extend(requests)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="kosmos2-batcher", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return [r.stream for r in requests]

    @contextmanager
    def hold(self) -> Iterator[None]:
        """While inside, the worker takes no new batch; requests queued meanwhile wait, and on exit
        they are batched as usual (oldest first, up to ``max_batch_size`` rows of one group).

        A batch already running goes on; holds may nest and come from several threads (the worker
        waits until the last one ends). :meth:`close` ends the holds' effect, so that it can finish
        the waiting requests.
        """
        with self._cond:
            self._holds += 1
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify_all()

    def wait_pending(self, rows: int, timeout: float | None = None) -> bool:
        """Wait until at least ``rows`` rows are queued and not yet taken by the worker (cancelled
        ones included); False if ``timeout`` seconds passed first. Inside :meth:`hold`, this tells
        when concurrent callers have all submitted."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._pending) >= rows, timeout)

    def close(self) -> None:
        """Finish the waiting requests (even during a :meth:`hold`), then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join()

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while True:
                while (not self._pending or self._holds) and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return None  # closed, nothing left
                group = self._pending[0].group
                deadline = time.monotonic() + self.gather_s
                while (
                    len([r for r in self._pending if r.group == group]) < self.max_batch_size
                    and not self._closed
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
                if self._holds and not self._closed:
                    continue  # a hold began while gathering: take the batch after it
                batch = [r for r in self._pending if r.group == group][: self.max_batch_size]
                self._pending = [r for r in self._pending if r not in batch]
                return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [r for r in batch if not r.stream.cancelled.is_set()]
            if live:
                self.batch_sizes.append(len(live))
                del self.batch_sizes[:-BATCH_SIZES_KEPT]
                self._run(live)

    def _run(self, batch: list[_Request]) -> None:
        streams = [r.stream for r in batch]
        limits = [r.settings.max_new_tokens for r in batch]
        settings = batch[0].settings
        if len(batch) > 1:
            settings = replace(settings, max_new_tokens=max(limits))
        eos_ids = set(generation.eos_id_list(self.engine.model.generation_config.eos_token_id))
        try:
            if settings.num_beams > 1:
                new = self.engine.run(
                    [batch[0].row], settings, generator=batch[0].generator, stop=streams[0].cancelled.is_set
                )
                _deliver(streams[0], new.sequences[0].tolist(), new.token_logprobs[0].tolist(), eos_ids)
            else:
                fan_out = _FanOut(streams, limits, eos_ids)
                self.engine.run(
                    [r.row for r in batch],
                    settings,
                    generator=batch[0].generator,
                    on_step=fan_out,
                    stop=fan_out.all_done,
                )
        except Exception as e:  # every row of the batch gets the error, raised in its consumer's thread
            for stream in streams:
                stream.finish(e)
        for stream in streams:
            stream.finish()


_BATCHERS: weakref.WeakSet[Batcher] = weakref.WeakSet()  # every live batcher, reset in a forked child


def _reset_after_fork() -> None:
    for b in list(_BATCHERS):
        b._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


def follow(streams: Sequence[RowStream], tick_s: float | None = None) -> Generator[list[list[int]], None, None]:
    """Each row's new ids so far, after every round in which each unfinished row got one more token
    (until every row is complete); with ``tick_s``, also after ``tick_s`` seconds without a token (so
    that a consumer waiting on a slow or all-at-once row, as beam search's, keeps control), else a
    stream's own ``timeout`` raises ``queue.Empty``. Closing the iterator early cancels the rows."""
    got: list[list[int]] = [[] for _ in streams]
    live = list(range(len(streams)))
    try:
        while live:
            grew = waited = False
            for i in list(live):
                try:
                    token = streams[i].next_item(streams[i].timeout if tick_s is None else tick_s)
                except queue.Empty:
                    if tick_s is None:
                        raise  # the stream's own timeout
                    waited = True  # no token for tick_s
                    break
                if token is None:
                    live.remove(i)
                else:
                    got[i].append(token)
                    grew = True
            if grew or waited:
                yield [list(row) for row in got]
    finally:
        for s in streams:
            s.cancel()


def _deliver(stream: RowStream, tokens: list[int], logprobs: list[float], eos_ids: set[int]) -> None:
    """Give a finished (beam search) row's tokens up to and including its first EOS."""
    for token, logprob in zip(tokens, logprobs):
        stream.add(token, logprob)
        if token in eos_ids:
            break
    stream.finish()
