"""Tokens handed from the thread that generates to the thread that reads them.

:class:`TokenStream` is the one stream: items in order, then an end (with the producer's error, if any)
that is given once, and a reader that waits at most ``timeout`` seconds per item. Its two producers:
:class:`TokenStreamer`, the streamer ``generate`` feeds (each step's ids, one per batch row; reusable for
another run), and :class:`RowStream`, one served row's ids with their log-probabilities (it can be
cancelled, or waited for with ``result``).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, ClassVar, Generic, TypeVar

import torch

T = TypeVar("T")


class TokenStream(Generic[T]):
    """Items put by one thread, iterated by another. Iteration ends at the end of the run and raises the
    producer's error there; an item that takes more than ``timeout`` seconds raises ``queue.Empty``."""

    _END = object()
    ENDS_FOR_GOOD: ClassVar[bool] = True  # False: a later run may put more items after the end

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.error: BaseException | None = None
        self.done = threading.Event()  # the current run has ended
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()  # the producer's puts against an end from any thread

    def _end(self, error: BaseException | None = None) -> None:
        """End the run once: later ends, and items put after it, change nothing."""
        with self._lock:
            if not self.done.is_set():
                self.error = error
                self.done.set()
                self._queue.put(self._END)

    def next_item(self, timeout: float | None) -> T | None:
        """The next item, or None at the end of the run (raising the producer's error there);
        ``queue.Empty`` after ``timeout`` seconds without either."""
        item = self._queue.get(timeout=timeout)
        if item is self._END:
            if self.ENDS_FOR_GOOD:
                self._queue.put(self._END)  # a stream that has ended stays ended
            if self.error is not None:
                raise self.error
            return None
        return item

    def __iter__(self) -> TokenStream[T]:
        return self

    def __next__(self) -> T:
        item = self.next_item(self.timeout)
        if item is None:
            raise StopIteration
        return item


class TokenStreamer(TokenStream[list[int]]):
    """A thread-safe streamer to iterate over while ``generate`` runs in another thread.

    Iterating yields each step's new token ids as a list of ints (one per batch row) and stops after
    ``end()``. The prompt ids of the last run are kept in ``prompt_ids``. ``end()`` may be called again
    (e.g. by a caller's error handler after ``generate`` already ended the stream): a run ends once, and the
    next run's prompt starts a new one.
    """

    ENDS_FOR_GOOD = False

    def __init__(self, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.prompt_ids: torch.Tensor | None = None
        self._expect_prompt = True

    def put(self, ids: torch.Tensor) -> None:
        """The prompt ids (batch, length) when a run starts, then each step's (batch,) new ids."""
        with self._lock:
            if self._expect_prompt:
                self.prompt_ids = ids
                self._expect_prompt = False
                self.done.clear()
            else:
                self._queue.put(ids.reshape(-1).tolist())

    def end(self) -> None:
        """The run is over (``generate`` calls it, also when it fails before its first step)."""
        self._expect_prompt = True
        self._end()


class RowStream(TokenStream[int]):
    """One served row's new tokens as they are generated: iterate for ids, or wait with :meth:`result`.

    Iteration ends after the row's last token (EOS, or its ``max_new_tokens``); an error of the batch it
    ran in is raised there. :meth:`cancel` drops the row (its batch goes on without it). ``logprobs[i]`` is
    the raw log-probability of ``tokens[i]`` (set before the token is iterated).
    """

    def __init__(self, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.cancelled = threading.Event()

    def add(self, token: int, logprob: float) -> None:
        """The row's next token and its log-probability (ignored once the row has ended)."""
        with self._lock:
            if not self.done.is_set():
                self.tokens.append(token)
                self.logprobs.append(logprob)
                self._queue.put(token)

    def finish(self, error: BaseException | None = None) -> None:
        """The row is complete, or failed with ``error`` (its batch's)."""
        self._end(error)

    def cancel(self) -> None:
        """Stop receiving tokens; the row stops taking part in its batch."""
        self.cancelled.set()
        self._end()

    def result(self, timeout: float | None = None) -> list[int]:
        """All new ids of the row, once it is done (raises the batch's error, or TimeoutError)."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"the row was not done after {timeout} s")
        if self.error is not None:
            raise self.error
        return list(self.tokens)
