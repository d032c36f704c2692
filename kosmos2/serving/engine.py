"""Batched generation with per-row positions: rows laid out as ``[prefix][pads][rest]``, so that the
prefixes line up and each row's positions count only its own tokens (every row gets exactly the tokens
it would get alone; the seed API's ``generate`` keeps the reference's shifted positions instead)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .. import generation
from ..cache import KVCache
from ..generation import DecodingSettings, Streamer
from ..language import position_ids_from_input_ids
from .prefix_cache import DEFAULT_MAX_IMAGES, PrefixCache, PrefixEntry
from .rows import Row, check_one_sequence, split_batch, split_row

if TYPE_CHECKING:
    from ..model import Kosmos2ForConditionalGeneration


class RowDecoder:
    """Next-token logits from a ``KVCache`` that already holds each row's prefix.

    Each call feeds the columns of ``sequences`` after the cached ones. A row's positions count only
    its own tokens (``attention_mask`` 1), so pads anywhere in the row do not shift them. A
    :class:`kosmos2.generation.Decoder`.
    """

    def __init__(self, model: Kosmos2ForConditionalGeneration, cache: KVCache) -> None:
        self.model = model
        self.cache = cache

    def __call__(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and (N, L) attention so far -> (N, V) float32 logits for the next token."""
        past = self.cache.length
        ids = sequences[:, past:]  # (N, new)
        seen = attention_mask[:, :past].sum(dim=1, keepdim=True)  # (N, 1) real tokens in the cache
        positions = position_ids_from_input_ids(ids, self.model.config.text_config.pad_token_id, seen)
        return self.model.next_token_logits(ids, attention_mask, self.cache, position_ids=positions)

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
        attention.append(
            torch.cat([torch.ones_like(r.prefix_ids), r.rest_ids.new_zeros(pads), torch.ones_like(r.rest_ids)])
        )
    return torch.stack(ids), torch.stack(attention)


@dataclass(frozen=True)
class Prepared:
    """A batch ready to decode: its decoder (cache filled with the prefixes) and ids/attention so far."""

    decoder: RowDecoder
    sequences: torch.Tensor  # (B * copies, P + R)
    attention_mask: torch.Tensor  # (B * copies, P + R)


class Engine:
    """Generation for batches of rows with a per-image prefix cache; thread-safe.

    ``generate`` takes the processor's (left-padded) batch like ``model.generate`` and returns the same
    layout, with each row's tokens what that row alone would give (token-identical for batch 1).
    """

    def __init__(self, model: Kosmos2ForConditionalGeneration, max_images: int = DEFAULT_MAX_IMAGES) -> None:
        self.model = model
        self.prefixes = PrefixCache(max_images)

    @property
    def pad_id(self) -> int:
        return self.model.config.text_config.pad_token_id

    def rows(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        image_embeds_position_mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
    ) -> list[Row]:
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
                raise ValueError(
                    f"pixel_values of a row must have shape (3, {size}, {size}) for this model, "
                    f"got {tuple(r.pixel_values.shape)}"
                )

    @torch.no_grad()
    def prefix_entries(self, rows: Sequence[Row]) -> list[PrefixEntry]:
        """Each row's prefix keys/values: from the cache, or computed (all misses in one batch) and stored."""
        found: dict[str, PrefixEntry] = {}
        for key in dict.fromkeys(r.key for r in rows):  # one lookup per image
            if (entry := self.prefixes.get(key)) is not None:
                found[key] = entry
        missing = list({r.key: r for r in rows if r.key not in found}.values())
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
        model.text_model.model(
            input_ids=ids,
            image_embeds=image_embeds,
            image_embeds_position_mask=slots,
            past_key_values=cache,
            use_cache=True,
        )
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
        cache = KVCache.for_config(
            model.config.text_config, keys.shape[1], sequences.shape[1] + max_new_tokens, model.dtype, device
        )
        cache.reserve(length)
        for layer in range(len(cache)):
            cache.update(layer, keys[layer], values[layer])
        cache.advance(length)
        return Prepared(RowDecoder(model, cache), sequences, attention)

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
            job = generation.DecodeJob(
                ready.decoder,
                ready.sequences,
                ready.attention_mask,
                settings,
                eos_ids,
                self.pad_id,
                ignored=pads,
                generator=generator,
                on_step=on_step,
                stop=stop,
            )
            out = generation.decode(job, streamer)
        finally:
            if streamer is not None:
                streamer.end()
        return replace(out, sequences=out.sequences[:, ready.sequences.shape[1] :])

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
            settings = DecodingSettings(max_new_tokens=max_new_tokens, **decoding)  # type: ignore[arg-type]  # None: DecodingSettings raises, saying why
            input_ids, _ = generation.check_prompt_shapes(input_ids, image_embeds_position_mask, attention_mask)
            rows = self.rows(pixel_values, input_ids, image_embeds_position_mask, attention_mask)
            if streamer is not None:
                streamer.put(input_ids.cpu())
        except BaseException:  # run() ends the streamer from here on; before it, end it here
            if streamer is not None:
                streamer.end()
            raise
        new = self.run(rows, settings, eos_token_id, generator, streamer).sequences
        return torch.cat([input_ids.to(new.device), new], dim=1)
