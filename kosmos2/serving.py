"""Serving many users: a cache of each image's prefix, and batched generation with per-row positions.

Every prompt starts with the same image prefix, ``<s> <image>`` and the image slots. Its keys and
values depend only on the image (and those ids), so :class:`PrefixCache` keeps them per image, in a
small thread-safe LRU: a new prompt on a cached image copies them into a fresh ``KVCache`` and
prefills only its own tokens (``</image>`` and the prompt), skipping the vision encoder too.

:class:`Engine` generates for a batch of rows laid out as ``[prefix][pads][rest]``: the prefixes (all
the same length) line up, and each row's positions count only its own tokens, so every row gets
exactly the tokens it would get alone. (The seed API's ``generate`` keeps the reference's behaviour
instead, where left-padded rows decode at positions shifted by their pad count.)

:class:`Batcher` gathers concurrent requests into such batches on one worker thread and streams
each row's tokens to its own :class:`RowStream`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from . import detection, generation
from .cache import KVCache
from .generation import DecodingSettings, Streamer
from .language import position_ids_from_input_ids

if TYPE_CHECKING:
    from .model import Kosmos2ForConditionalGeneration

DEFAULT_MAX_IMAGES = 8
LOCATE_ROWS = 64  # candidates per batched step of Engine.locate (each holds a copy of its prefix cache)
BATCH_SIZES_KEPT = 1000


# ----------------------------------------------------------------------------- rows and keys


@dataclass(frozen=True)
class Row:
    """One prompt with its image, split at the end of the image slots."""

    pixel_values: torch.Tensor  # (3, S, S)
    prefix_ids: torch.Tensor  # (P,) <s> <image> and the slots
    prefix_mask: torch.Tensor  # (P,) image_embeds_position_mask of the prefix
    rest_ids: torch.Tensor  # (R,) </image> and the prompt, R >= 1
    key: str  # hash of the image and the prefix: the PrefixCache key


def prefix_key(pixel_values: torch.Tensor, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor) -> str:
    """SHA-256 of the preprocessed pixels (bytes, dtype, shape) and of the prefix ids and slot mask."""
    digest = hashlib.sha256()
    for t in (pixel_values, prefix_ids, prefix_mask):
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def split_row(pixel_values: torch.Tensor, input_ids: torch.Tensor, image_mask: torch.Tensor, pad_id: int) -> Row:
    """A :class:`Row` from one unpadded prompt: (3, S, S) pixels, (T,) ids and (T,) image slot mask."""
    if pixel_values.ndim != 3:
        raise ValueError(f"pixel_values of one row must have shape (3, size, size), got {tuple(pixel_values.shape)}")
    if input_ids.ndim != 1 or image_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and image_embeds_position_mask of one row must be 1-D and of equal length, "
                         f"got {tuple(input_ids.shape)} and {tuple(image_mask.shape)}")
    slots = image_mask.nonzero()
    if slots.numel() == 0:
        raise ValueError("the prompt has no image slots (image_embeds_position_mask is all 0)")
    length = int(slots.max()) + 1
    if length >= input_ids.shape[0]:
        raise ValueError("the prompt has no tokens after its image slots (expected at least </image>)")
    prefix_ids = input_ids[:length]
    if bool((prefix_ids == pad_id).any()):
        raise ValueError(f"the image prefix contains the pad id {pad_id}: rows must be left-padded only")
    prefix_mask = image_mask[:length]
    return Row(pixel_values, prefix_ids, prefix_mask, input_ids[length:],
               prefix_key(pixel_values, prefix_ids, prefix_mask))


def split_batch(
    pixel_values: torch.Tensor | None,
    input_ids: torch.Tensor | None,
    image_embeds_position_mask: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    pad_id: int,
) -> list[Row]:
    """The rows of a processor batch (left-padded (B, T) tensors and (B, 3, S, S) pixels)."""
    generation.check_prompt_shapes(input_ids, image_embeds_position_mask, attention_mask)
    if pixel_values is None or pixel_values.ndim != 4 or pixel_values.shape[0] != input_ids.shape[0]:
        shape = None if pixel_values is None else tuple(pixel_values.shape)
        raise ValueError(f"pixel_values of shape ({input_ids.shape[0]}, 3, size, size) are required, got {shape}")
    if attention_mask is None:
        attention_mask = input_ids.ne(pad_id).long()
    rows = []
    for pixels, ids, slots, keep in zip(pixel_values, input_ids, image_embeds_position_mask, attention_mask):
        keep = keep.bool()
        start = int(keep.long().argmax())
        if not bool(keep[start:].all()):
            raise ValueError("attention_mask must be 0s then 1s per row (left padding only)")
        rows.append(split_row(pixels, ids[start:], slots[start:], pad_id))
    return rows


def check_one_sequence(settings: DecodingSettings) -> None:
    """Serving gives one sequence per row: ``num_return_sequences`` is ``model.generate``'s."""
    if settings.num_return_sequences != 1:
        raise ValueError("num_return_sequences must be 1 when serving (one sequence per row); "
                         "use model.generate for several sequences per prompt")


# ----------------------------------------------------------------------------- the prefix cache


@dataclass(frozen=True)
class PrefixEntry:
    """The decoder's keys and values over one image prefix."""

    keys: torch.Tensor  # (layers, heads, P, head_dim)
    values: torch.Tensor  # (layers, heads, P, head_dim)


class PrefixCache:
    """A thread-safe LRU of :class:`PrefixEntry` by :func:`prefix_key`, at most ``max_entries``."""

    def __init__(self, max_entries: int = DEFAULT_MAX_IMAGES) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> PrefixEntry | None:
        """The entry (now the most recently used) or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: PrefixEntry) -> None:
        """Store ``entry``, evicting the least recently used ones beyond ``max_entries``."""
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# ----------------------------------------------------------------------------- decoding


class RowDecoder:
    """Next-token logits from a ``KVCache`` that already holds each row's prefix.

    Each call feeds the columns of ``sequences`` after the cached ones. A row's positions count only
    its own tokens (``attention_mask`` 1), so pads anywhere in the row do not shift them. A
    :class:`kosmos2.generation.Decoder`.
    """

    def __init__(self, model: "Kosmos2ForConditionalGeneration", cache: KVCache) -> None:
        self.model = model
        self.cache = cache

    def __call__(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and (N, L) attention so far -> (N, V) float32 logits for the next token."""
        past = self.cache.length
        ids = sequences[:, past:]  # (N, new)
        seen = attention_mask[:, :past].sum(dim=1, keepdim=True)  # (N, 1) real tokens in the cache
        text = self.model.text_model
        positions = position_ids_from_input_ids(ids, text.model.config.pad_token_id, seen)
        hidden = text.model(input_ids=ids, attention_mask=attention_mask, past_key_values=self.cache,
                            position_ids=positions, use_cache=True).last_hidden_state
        return text.lm_head(hidden[:, -1]).float()

    def reorder(self, index: torch.Tensor) -> None:
        """Row i of the cache becomes old row ``index[i]`` (beam search)."""
        self.cache.reorder(index)


def layout(rows: Sequence[Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ids and attention mask, (B, P + R) each, as ``[prefix][pads][rest]`` per row."""
    width = max(r.rest_ids.shape[0] for r in rows)
    ids, attention = [], []
    for r in rows:
        pads = width - r.rest_ids.shape[0]
        ids.append(torch.cat([r.prefix_ids, r.rest_ids.new_full((pads,), pad_id), r.rest_ids]))
        attention.append(torch.cat([torch.ones_like(r.prefix_ids), r.rest_ids.new_zeros(pads),
                                    torch.ones_like(r.rest_ids)]))
    return torch.stack(ids), torch.stack(attention)


@dataclass(frozen=True)
class Prepared:
    """A batch ready to decode: its decoder (cache filled with the prefixes) and ids/attention so far."""

    decoder: RowDecoder
    sequences: torch.Tensor  # (B * copies, P + R)
    attention_mask: torch.Tensor  # (B * copies, P + R)


@dataclass(frozen=True)
class Located:
    """:meth:`Engine.locate`'s answer for one row: p(first cell) (C,), the first cells tried, and for each,
    p(second cell | first) (tried, C) (None when none was tried)."""

    first: torch.Tensor
    tried: list[int]
    second: torch.Tensor | None


class Engine:
    """Generation for batches of rows with a per-image prefix cache; thread-safe.

    ``generate`` takes the processor's (left-padded) batch like ``model.generate`` and returns the same
    layout, with each row's tokens what that row alone would give (token-identical for batch 1).
    """

    def __init__(self, model: "Kosmos2ForConditionalGeneration", max_images: int = DEFAULT_MAX_IMAGES) -> None:
        self.model = model
        self.prefixes = PrefixCache(max_images)

    @property
    def pad_id(self) -> int:
        return self.model.config.text_config.pad_token_id

    def rows(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor | None,
             image_embeds_position_mask: torch.Tensor | None,
             attention_mask: torch.Tensor | None = None) -> list[Row]:
        """The rows of a processor batch (see :func:`split_batch`)."""
        rows = split_batch(pixel_values, input_ids, image_embeds_position_mask, attention_mask, self.pad_id)
        self._check_image_size(rows)
        return rows

    def row(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, image_embeds_position_mask: torch.Tensor) -> Row:
        """One unpadded prompt as a row (see :func:`split_row`)."""
        row = split_row(pixel_values, input_ids, image_embeds_position_mask, self.pad_id)
        self._check_image_size([row])
        return row

    def _check_image_size(self, rows: Sequence[Row]) -> None:
        size = self.model.config.vision_config.image_size
        for r in rows:
            if tuple(r.pixel_values.shape) != (3, size, size):
                raise ValueError(f"pixel_values of a row must have shape (3, {size}, {size}) for this model, "
                                 f"got {tuple(r.pixel_values.shape)}")

    @torch.no_grad()
    def prefix_entries(self, rows: Sequence[Row]) -> list[PrefixEntry]:
        """Each row's prefix keys/values: from the cache, or computed (all misses in one batch) and stored."""
        found = {key: self.prefixes.get(key) for key in dict.fromkeys(r.key for r in rows)}  # one lookup per image
        missing = list({r.key: r for r in rows if found[r.key] is None}.values())
        by_length: dict[int, list[Row]] = {}
        for r in missing:
            by_length.setdefault(r.prefix_ids.shape[0], []).append(r)
        for group in by_length.values():
            for r, entry in zip(group, self._compute_prefixes(group)):
                self.prefixes.put(r.key, entry)
                found[r.key] = entry
        return [found[r.key] for r in rows]

    def _compute_prefixes(self, rows: Sequence[Row]) -> list[PrefixEntry]:
        """Vision, projection and decoder over the prefixes of ``rows`` (all of one length P)."""
        model, device = self.model, self.model.device
        pixels = torch.stack([r.pixel_values for r in rows]).to(device, model.dtype)  # (M, 3, S, S)
        ids = torch.stack([r.prefix_ids for r in rows]).to(device)  # (M, P)
        slots = torch.stack([r.prefix_mask for r in rows]).to(device)
        image_embeds = model.get_image_features(pixels)[0]  # (M, Q, D)
        cache = KVCache.for_config(model.config.text_config, len(rows), ids.shape[1], model.dtype, device)
        model.text_model.model(input_ids=ids, image_embeds=image_embeds, image_embeds_position_mask=slots,
                               past_key_values=cache, use_cache=True)
        keys = torch.stack([cache[layer][0] for layer in range(len(cache))], dim=1)  # (M, layers, H, P, hd)
        values = torch.stack([cache[layer][1] for layer in range(len(cache))], dim=1)
        return [PrefixEntry(k.clone(), v.clone()) for k, v in zip(keys, values)]

    @torch.no_grad()
    def prepare(self, rows: Sequence[Row], copies: int = 1, max_new_tokens: int = 0) -> Prepared:
        """A decoder whose cache holds each row's prefix (each row ``copies`` times, for beams), with
        room for the rest and ``max_new_tokens``."""
        if not rows:
            raise ValueError("no rows to generate for")
        entries = self.prefix_entries(rows)
        model, device = self.model, self.model.device
        sequences, attention = (t.to(device).repeat_interleave(copies, dim=0) for t in layout(rows, self.pad_id))
        keys = torch.stack([e.keys for e in entries], dim=1).repeat_interleave(copies, dim=1)  # (L, N, H, P, hd)
        values = torch.stack([e.values for e in entries], dim=1).repeat_interleave(copies, dim=1)
        length = keys.shape[3]
        cache = KVCache.for_config(model.config.text_config, keys.shape[1], sequences.shape[1] + max_new_tokens,
                                   model.dtype, device)
        cache.reserve(length)
        for layer in range(len(cache)):
            cache.update(layer, keys[layer], values[layer])
        cache.advance(length)
        return Prepared(RowDecoder(model, cache), sequences, attention)

    @torch.no_grad()
    def locate(self, rows: Sequence[Row], location_ids: torch.Tensor, candidates: int,
               floor: float) -> list[Located]:
        """Where each row's next box may be: for prompts that end in ``<object>``, the distribution over the
        first location token, and for its ``candidates`` likeliest first cells (at least ``floor``), the
        distribution over the second one given each. ``location_ids`` (C,) are the location tokens' ids,
        cell order. Both distributions are the softmax of the raw logits over the whole vocabulary, at
        the location tokens. One forward pass over the rows' prompts, then batched steps (at most
        ``LOCATE_ROWS`` candidates each) for every candidate of every row, on the cached prefix."""
        ready = self.prepare(rows, 1, max_new_tokens=1)
        location_ids = location_ids.to(ready.sequences.device)
        first = ready.decoder(ready.sequences, ready.attention_mask).softmax(dim=-1)[:, location_ids].cpu()  # (B, C)
        picks = [(r, cell) for r in range(len(rows))
                 for cell, _ in detection.top_cells(first[r].tolist(), candidates, floor)]
        seconds = []
        for start in range(0, len(picks), LOCATE_ROWS):  # each chunk copies the prefix cache once per pick
            chunk = picks[start:start + LOCATE_ROWS]
            index = torch.tensor([r for r, _ in chunk], device=ready.sequences.device)
            decoder = RowDecoder(self.model, ready.decoder.cache.selected(index))
            cells = torch.tensor([c for _, c in chunk], device=ready.sequences.device)
            sequences = torch.cat([ready.sequences[index], location_ids[cells].unsqueeze(1)], dim=1)
            attention = torch.nn.functional.pad(ready.attention_mask[index], (0, 1), value=1)
            seconds.append(decoder(sequences, attention).softmax(dim=-1)[:, location_ids].cpu())  # (chunk, C)
        second = torch.cat(seconds) if seconds else None
        return [Located(first[r], [c for row, c in picks if row == r],
                        None if second is None else second[[k for k, (row, _) in enumerate(picks) if row == r]])
                for r in range(len(rows))]

    @torch.no_grad()
    def run(
        self,
        rows: Sequence[Row],
        settings: DecodingSettings,
        eos_token_id: int | list[int] | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,
        on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> generation.Decoded:
        """Decode ``rows``; the result's ``sequences`` are the (B, new) generated ids only (finished rows
        padded), with their ``token_logprobs``.

        ``streamer`` gets each step's (B,) new ids (not the prompt) and ``end()`` at the end; ``on_step``
        (greedy and sampling) the new ids and their raw log-probabilities; ``stop`` ends decoding (see
        ``DecodeJob``).
        """
        eos_ids = generation.eos_tensor(self.model, eos_token_id)
        try:
            generation.check_streaming(settings, streamer)
            check_one_sequence(settings)
            ready = self.prepare(rows, settings.num_beams, settings.max_new_tokens)
            pads = ready.attention_mask == 0  # the middle pads of [prefix][pads][rest]: invisible to penalties
            job = generation.DecodeJob(ready.decoder, ready.sequences, ready.attention_mask, settings, eos_ids,
                                       self.pad_id, ignored=pads, generator=generator, on_step=on_step,
                                       stop=stop)
            out = generation.decode(job, streamer)
        finally:
            if streamer is not None:
                streamer.end()
        return replace(out, sequences=out.sequences[:, ready.sequences.shape[1]:])

    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        eos_token_id: int | list[int] | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,
        **decoding: Any,
    ) -> torch.Tensor:
        """Like ``model.generate`` (same arguments; ``decoding`` are its decoding options) through the
        prefix cache, with per-row positions. Returns (B, T + new): the given ids, then the new ones.
        ``streamer`` gets the prompt ids first, as with ``model.generate``."""
        try:
            settings = DecodingSettings(max_new_tokens=max_new_tokens, **decoding)  # type: ignore[arg-type]
            rows = self.rows(pixel_values, input_ids, image_embeds_position_mask, attention_mask)
            if streamer is not None:
                streamer.put(input_ids.cpu())
        except BaseException:  # run() ends the streamer from here on; before it, end it here
            if streamer is not None:
                streamer.end()
            raise
        new = self.run(rows, settings, eos_token_id, generator, streamer).sequences
        return torch.cat([input_ids.to(new.device), new], dim=1)


# ----------------------------------------------------------------------------- the batcher


class RowStream:
    """One request's new tokens as they are generated: iterate for ids, or wait with :meth:`result`.

    Iteration ends after the row's last token (EOS, or its ``max_new_tokens``); an error of the
    batch it ran in is raised there. :meth:`cancel` drops the row (its batch goes on without it).
    ``logprobs[i]`` is the raw log-probability of ``tokens[i]`` (set before the token is iterated).
    """

    _END = object()

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # the worker's _put/_finish against the consumer's cancel()

    def _put(self, token: int, logprob: float) -> None:
        with self._lock:
            if not self.done.is_set():
                self.tokens.append(token)
                self.logprobs.append(logprob)
                self._queue.put(token)

    def _finish(self, error: BaseException | None = None) -> None:
        with self._lock:
            if not self.done.is_set():
                self.error = error
                self.done.set()
                self._queue.put(self._END)

    def cancel(self) -> None:
        """Stop receiving tokens; the row stops taking part in its batch."""
        self.cancelled.set()
        self._finish()

    def next_token(self, timeout: float | None) -> int | None:
        """The row's next new id, or None once it is complete (the batch's error is raised then);
        ``queue.Empty`` after ``timeout`` seconds without either."""
        item = self._queue.get(timeout=timeout)
        if item is self._END:
            self._queue.put(self._END)  # a complete row stays complete
            if self.error is not None:
                raise self.error
            return None
        return item

    def __iter__(self) -> Iterator[int]:
        while (token := self.next_token(self.timeout)) is not None:
            yield token

    def result(self, timeout: float | None = None) -> list[int]:
        """All new ids of the row, once it is done (raises the batch's error, or TimeoutError)."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"the row was not done after {timeout} s")
        if self.error is not None:
            raise self.error
        return list(self.tokens)


class _AllRowsDone(Exception):
    """Ends a batch's decoding loop once no row takes tokens any more."""


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
            stream._put(token, logprob)
            if token in self.eos_ids or len(stream.tokens) >= limit:
                stream._finish()
        if all(s.done.is_set() for s in self.streams):
            raise _AllRowsDone


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
        self.group = (id(self),) if alone else (s.min_new_tokens, s.do_sample, s.temperature, s.top_k, s.top_p,
                                               s.repetition_penalty, s.no_repeat_ngram_size)


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

    def _enqueue(self, rows: Sequence[Row], max_new_tokens: int | None, generator: torch.Generator | None,
                 timeout: float | None, decoding: dict[str, Any]) -> list[RowStream]:
        settings = DecodingSettings(max_new_tokens=max_new_tokens, **decoding)  # type: ignore[arg-type]
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
                while (len([r for r in self._pending if r.group == group]) < self.max_batch_size
                       and not self._closed and (left := deadline - time.monotonic()) > 0):
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
                new = self.engine.run([batch[0].row], settings, generator=batch[0].generator,
                                      stop=streams[0].cancelled.is_set)
                _deliver(streams[0], new.sequences[0].tolist(), new.token_logprobs[0].tolist(), eos_ids)
            else:
                self.engine.run([r.row for r in batch], settings, generator=batch[0].generator,
                                on_step=_FanOut(streams, limits, eos_ids))
        except _AllRowsDone:
            pass
        except Exception as e:  # every row of the batch gets the error, raised in its consumer's thread
            for stream in streams:
                stream._finish(e)
        for stream in streams:
            stream._finish()


_BATCHERS: weakref.WeakSet[Batcher] = weakref.WeakSet()  # every live batcher, reset in a forked child
os.register_at_fork(after_in_child=lambda: [b._after_fork() for b in list(_BATCHERS)])


def follow(streams: Sequence[RowStream], tick_s: float | None = None) -> Iterator[list[list[int]]]:
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
                    token = streams[i].next_token(streams[i].timeout if tick_s is None else tick_s)
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
        stream._put(token, logprob)
        if token in eos_ids:
            break
    stream._finish()
