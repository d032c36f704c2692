"""Beam search's step and its stopping rule, pure functions on a :class:`BeamState` (the reference's
choices: the same hypotheses, scores and length penalty)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .settings import DecodingSettings

_NEG = -1.0e9  # the reference's "impossible" beam score


@dataclass
class BeamState:
    """Running and finished hypotheses of a beam search, (batch, beams, ...) each.

    Per new token, ``*_indices`` hold the flat (batch * beams) row it was chosen from (-1: none yet),
    as the reference's ``beam_indices``, and ``*_logprobs`` its raw log-probability (the model's
    log-softmax before any score processing).
    """

    running: torch.Tensor  # (B, K, max_len) ids, pad-filled
    running_scores: torch.Tensor  # (B, K) summed log-probs
    running_lengths: torch.Tensor  # (B, K) generated tokens
    running_indices: torch.Tensor  # (B, K, max_new)
    running_logprobs: torch.Tensor  # (B, K, max_new)
    finished: torch.Tensor  # (B, K, max_len)
    finished_scores: torch.Tensor  # (B, K) length-normalised
    finished_lengths: torch.Tensor  # (B, K)
    finished_indices: torch.Tensor  # (B, K, max_new)
    finished_logprobs: torch.Tensor  # (B, K, max_new)
    is_finished: torch.Tensor  # (B, K) bool: slot holds a real hypothesis
    improvable: torch.Tensor  # (B, 1) bool: a running beam may still beat the finished ones

    @classmethod
    def start(cls, prompts: torch.Tensor, num_beams: int, max_len: int, pad_id: int) -> BeamState:
        """``prompts`` (B*K, T), each prompt repeated ``num_beams`` times; only beam 0 starts live."""
        total, length = prompts.shape
        b = total // num_beams
        running = prompts.new_full((b, num_beams, max_len), pad_id)
        running[:, :, :length] = prompts.view(b, num_beams, length)
        scores = torch.zeros((b, num_beams), dtype=torch.float32, device=prompts.device)
        scores[:, 1:] = _NEG
        lengths = torch.zeros((b, num_beams), dtype=torch.long, device=prompts.device)
        indices = torch.full((b, num_beams, max_len - length), -1, dtype=torch.int32, device=prompts.device)
        logprobs = torch.zeros((b, num_beams, max_len - length), dtype=torch.float32, device=prompts.device)
        return cls(
            running=running,
            running_scores=scores,
            running_lengths=lengths,
            running_indices=indices,
            running_logprobs=logprobs,
            finished=running.clone(),
            finished_scores=torch.full_like(scores, _NEG),
            finished_lengths=lengths.clone(),
            finished_indices=indices.clone(),
            finished_logprobs=logprobs.clone(),
            is_finished=torch.zeros_like(scores, dtype=torch.bool),
            improvable=torch.ones((b, 1), dtype=torch.bool, device=prompts.device),
        )


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along dim 1 with a (B, N) index, for tensors with extra trailing dims too."""
    while index.ndim < t.ndim:
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def beam_step(
    state: BeamState,
    log_probs: torch.Tensor,
    raw_log_probs: torch.Tensor,
    cur_len: int,
    prompt_len: int,
    eos_ids: torch.Tensor,
    settings: DecodingSettings,
    generator: torch.Generator | None = None,
) -> tuple[BeamState, torch.Tensor, torch.Tensor]:
    """Extend the beams by one token. ``log_probs`` (B*K, V) are processed log-probabilities,
    ``raw_log_probs`` (B*K, V) the model's own (recorded per token).

    Returns the new state; per running beam, the flat (B*K,) index of the beam it continues (to
    reorder the KV cache); and which of this step's candidates stopped (EOS or length), (B, keep).
    Mirrors the reference's vectorised beam search.
    """
    b, k, max_len = state.running.shape
    vocab = log_probs.shape[-1]
    keep = max(2, 1 + eos_ids.numel()) * k
    total = (log_probs.view(b, k, vocab) + state.running_scores[:, :, None]).view(b, k * vocab)
    if settings.do_sample:
        picked = torch.multinomial(total.softmax(dim=-1), keep, generator=generator)
        scores, order = total.gather(1, picked).sort(dim=-1, descending=True)
        picked = picked.gather(1, order)
    else:
        scores, picked = torch.topk(total, keep)
    parents, tokens = picked // vocab, picked % vocab  # (B, keep)
    offsets = torch.arange(b, device=parents.device).unsqueeze(1) * k
    step = cur_len - prompt_len
    candidates = _take(state.running, parents)
    candidates[:, :, cur_len] = tokens
    candidate_lengths = _take(state.running_lengths, parents) + 1
    candidate_indices = _take(state.running_indices, parents)
    candidate_indices[:, :, step] = parents + offsets
    candidate_logprobs = _take(state.running_logprobs, parents)
    candidate_logprobs[:, :, step] = raw_log_probs.view(b, k, vocab)[
        torch.arange(b, device=parents.device).unsqueeze(1), parents, tokens
    ]
    stops = torch.isin(tokens, eos_ids) | (cur_len + 1 >= max_len)

    running_scores = scores + stops.to(torch.float32) * _NEG
    chosen = torch.topk(running_scores, k).indices
    beam_parents = _take(parents, chosen)

    final = scores / ((cur_len + 1 - prompt_len) ** settings.length_penalty)
    all_full = state.is_finished.all(dim=-1, keepdim=True) & (settings.early_stopping is True)
    final = final + all_full.to(torch.float32) * _NEG
    final = final + (~state.improvable).to(torch.float32) * _NEG
    just_finished = stops & (torch.arange(keep, device=stops.device) < k)
    final = final + (~just_finished).to(torch.float32) * _NEG
    merged_scores = torch.cat([state.finished_scores, final], dim=1)
    best = torch.topk(merged_scores, k).indices
    new = BeamState(
        running=_take(candidates, chosen),
        running_scores=_take(running_scores, chosen),
        running_lengths=_take(candidate_lengths, chosen),
        running_indices=_take(candidate_indices, chosen),
        running_logprobs=_take(candidate_logprobs, chosen),
        finished=_take(torch.cat([state.finished, candidates], dim=1), best),
        finished_scores=_take(merged_scores, best),
        finished_lengths=_take(torch.cat([state.finished_lengths, candidate_lengths], dim=1), best),
        finished_indices=_take(torch.cat([state.finished_indices, candidate_indices], dim=1), best),
        finished_logprobs=_take(torch.cat([state.finished_logprobs, candidate_logprobs], dim=1), best),
        is_finished=_take(torch.cat([state.is_finished, just_finished], dim=1), best),
        improvable=state.improvable,
    )
    if settings.early_stopping == "never" and settings.length_penalty > 0.0:
        best_length = max_len - prompt_len
    else:
        best_length = cur_len + 1 - prompt_len
    best_running = new.running_scores[:, :1] / (best_length**settings.length_penalty)
    worst_finished = torch.where(new.is_finished, new.finished_scores.min(dim=1, keepdim=True).values, _NEG)
    new.improvable = state.improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
    return new, (beam_parents + offsets).view(-1), stops


def beam_search_done(state: BeamState, stops: torch.Tensor, early_stopping: bool | str) -> bool:
    """The reference's stopping rule: no improvement possible, or all slots full (early stopping), or
    every candidate of the last step stopped."""
    full = bool(state.is_finished.all()) and early_stopping is True
    return not (bool(state.improvable.any()) and not full and not bool(stops.all()))
