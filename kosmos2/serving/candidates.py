"""Where the next box of a row may be (detect): the first location token's distribution, then the second
one's for each likely first cell, all on the engine's cached prefixes (:meth:`Engine.prepare`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import detection
from .engine import Engine, RowDecoder
from .rows import Row

LOCATE_ROWS = 64  # candidates per batched step of locate (each holds a copy of its prefix cache)


@dataclass(frozen=True)
class Located:
    """:func:`locate`'s answer for one row: p(first cell) (C,), the first cells tried (K of them), and for
    each, p(second cell | first) (K, C)."""

    first: torch.Tensor
    tried: list[int]
    second: torch.Tensor


@torch.no_grad()
def locate(
    engine: Engine, rows: Sequence[Row], location_ids: torch.Tensor, candidates: int, floor: float
) -> list[Located]:
    """For prompts that end in ``<object>``: the distribution over the first location token, and for its
    ``candidates`` likeliest first cells (at least ``floor``), the distribution over the second one given
    each. ``location_ids`` (C,) are the location tokens' ids, cell order. Both distributions are the softmax
    of the raw logits over the whole vocabulary, at the location tokens. One forward pass over the rows'
    prompts, then batched steps (at most ``LOCATE_ROWS`` candidates each) for every candidate of every
    row, on the cached prefix."""
    ready = engine.prepare(rows, 1, max_new_tokens=1)
    device = ready.sequences.device
    location_ids = location_ids.to(device)
    first = ready.decoder(ready.sequences, ready.attention_mask).softmax(dim=-1)[:, location_ids].cpu()  # (B, C)
    picks = [
        (r, cell) for r in range(len(rows)) for cell, _ in detection.top_cells(first[r].tolist(), candidates, floor)
    ]
    seconds = [first.new_zeros((0, first.shape[1]))]
    for start in range(0, len(picks), LOCATE_ROWS):  # each chunk copies the prefix cache once per pick
        chunk = picks[start : start + LOCATE_ROWS]
        index = torch.tensor([r for r, _ in chunk], device=device)
        decoder = RowDecoder(engine.model, ready.decoder.cache.selected(index))
        cells = torch.tensor([c for _, c in chunk], device=device)
        sequences = torch.cat([ready.sequences[index], location_ids[cells].unsqueeze(1)], dim=1)
        attention = torch.nn.functional.pad(ready.attention_mask[index], (0, 1), value=1)
        seconds.append(decoder(sequences, attention).softmax(dim=-1)[:, location_ids].cpu())  # (chunk, C)
    second = torch.cat(seconds)  # (picks, C)
    return [
        Located(
            first[r], [c for row, c in picks if row == r], second[[k for k, (row, _) in enumerate(picks) if row == r]]
        )
        for r in range(len(rows))
    ]
