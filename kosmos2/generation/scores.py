"""Score processing as pure functions on (rows, vocab) tensors, as the reference applies them: repetition
penalty, n-gram bans, suppressed tokens, temperature, top-k and top-p, then the token choice."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .settings import DecodingSettings


def apply_repetition_penalty(
    scores: torch.Tensor, sequences: torch.Tensor, penalty: float, ignored: torch.Tensor | None = None
) -> torch.Tensor:
    """Divide positive (multiply negative) scores of tokens present in ``sequences`` by ``penalty``.

    ``ignored`` (batch, length <= L) marks positions of each row that do not count (padding).
    """
    vocab = scores.shape[-1]
    ids = sequences.clamp(max=vocab)
    if ignored is not None:
        ids = ids.masked_fill(_extend(ignored, sequences.shape[1]), vocab)
    padded = F.pad(scores, (0, 1))  # column ``vocab`` absorbs ignored ids
    seen = padded.gather(1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return padded.scatter(1, ids, seen)[:, :vocab]


def ban_repeated_ngrams(
    scores: torch.Tensor, sequences: torch.Tensor, n: int, ignored: torch.Tensor | None = None
) -> torch.Tensor:
    """Set to -inf every token that would complete an n-gram already present in its row.

    ``ignored`` (batch, length <= L) marks positions (padding) that are taken out of a row before its
    n-grams are read, so the tokens on either side of them join up.
    """
    if ignored is not None and bool(ignored.any()):
        ignored = _extend(ignored, sequences.shape[1])
        return torch.cat(
            [
                ban_repeated_ngrams(scores[i : i + 1], sequences[i : i + 1, ~ignored[i]], n)
                for i in range(sequences.shape[0])
            ]
        )
    length = sequences.shape[1]
    if length < n:
        return scores
    prefix = sequences[:, length + 1 - n :]  # (B, n-1): the current suffix
    windows = sequences.unfold(1, n, 1)  # (B, W, n)
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
    vocab = scores.shape[-1]
    banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return scores.masked_fill(banned[:, :vocab], float("-inf"))


def _extend(mask: torch.Tensor, length: int) -> torch.Tensor:
    """A (B, T) mask padded with False to (B, length)."""
    return F.pad(mask, (0, length - mask.shape[1]), value=False)


def suppress_tokens(scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Set the scores of ``token_ids`` to -inf (used to forbid EOS before ``min_new_tokens``)."""
    mask = torch.isin(torch.arange(scores.shape[-1], device=scores.device), token_ids)
    return scores.masked_fill(mask, float("-inf"))


def top_k_filter(scores: torch.Tensor, k: int, min_keep: int = 1) -> torch.Tensor:
    """Keep the ``k`` highest scores of each row (ties with the k-th kept), others -inf."""
    k = min(max(k, min_keep), scores.shape[-1])
    kth = torch.topk(scores, k).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering: drop the least likely tokens whose total probability is at most ``1 - p``."""
    ascending, order = torch.sort(scores, descending=False)
    drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
    drop[..., -min_keep:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def process_scores(
    scores: torch.Tensor,
    sequences: torch.Tensor,
    settings: DecodingSettings,
    new_tokens: int,
    eos_ids: torch.Tensor,
    ignored: torch.Tensor | None,
) -> torch.Tensor:
    """All score processors, in the reference's order: penalties and bans, then the sampling warpers.

    ``ignored`` (B, T) marks the prompt's padding, which the penalty and the n-gram ban do not see.
    """
    if settings.repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, sequences, settings.repetition_penalty, ignored)
    if settings.no_repeat_ngram_size > 0:
        scores = ban_repeated_ngrams(scores, sequences, settings.no_repeat_ngram_size, ignored)
    if new_tokens < settings.min_new_tokens and eos_ids.numel():
        scores = suppress_tokens(scores, eos_ids)
    if settings.do_sample:
        # beam sampling keeps one candidate more than there are EOS ids
        min_keep = 1 + eos_ids.numel() if settings.num_beams > 1 else 1
        if settings.temperature != 1.0:
            scores = scores / settings.temperature
        if settings.top_k:
            scores = top_k_filter(scores, settings.top_k, min_keep)
        if settings.top_p is not None and settings.top_p < 1.0:
            scores = top_p_filter(scores, settings.top_p, min_keep)
    return scores


def choose_tokens(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) processed scores -> (B,) ids: argmax, or a draw from softmax(scores)."""
    if do_sample:
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
    return scores.argmax(dim=-1)
