"""The decoding loops over a :class:`Decoder` (next-token logits, beam reordering): a :class:`DecodeJob`
goes to :func:`decode`, which runs :func:`sample` (greedy or sampling) or :func:`beam_search`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from .beam import BeamState, beam_search_done, beam_step
from .scores import choose_tokens, process_scores
from .settings import DecodingSettings, Streamer


class Decoder(Protocol):
    """What the decoding loops call: next-token logits for the ids so far, and beam reordering."""

    def __call__(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and (N, L) attention so far -> (N, V) float32 logits for the next token."""
        ...

    def reorder(self, index: torch.Tensor) -> None:
        """Keep (and duplicate) cached rows: row i becomes old row ``index[i]``."""
        ...


def left_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) True on each row's positions before its first attended one (as the reference counts padding)."""
    first = (attention_mask != 0).int().argmax(dim=1, keepdim=True)  # (B, 1)
    return torch.arange(attention_mask.shape[1], device=attention_mask.device) < first


def eos_id_list(eos_token_id: int | Sequence[int] | None) -> list[int]:
    """The end-of-sequence ids as a list (``eos_token_id`` may be one id, several, or None)."""
    if eos_token_id is None:
        return []
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def check_streaming(settings: DecodingSettings, streamer: Streamer | None) -> None:
    """Beam search chooses its tokens only at the end, so it cannot stream."""
    if streamer is not None and settings.num_beams > 1:
        raise ValueError("streaming is not supported with beam search (num_beams > 1)")


def check_prompt_shapes(
    input_ids: torch.Tensor | None, image_embeds_position_mask: torch.Tensor | None, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, image_embeds_position_mask)``, once checked: ``ValueError`` unless ``input_ids`` is
    (batch, length > 0) and the image slot mask (required) and the attention mask (optional) have its shape."""
    if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids of shape (batch, length > 0) are required")
    if image_embeds_position_mask is None:
        raise ValueError("image_embeds_position_mask is required (the processor returns it)")
    for name, mask in (("image_embeds_position_mask", image_embeds_position_mask), ("attention_mask", attention_mask)):
        if mask is not None and mask.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(input_ids.shape)} like input_ids")
    return input_ids, image_embeds_position_mask


@dataclass(frozen=True)
class DecodeJob:
    """What a decoding loop runs on: the decoder, the (N, L) ids and attention so far, the settings, the
    end-of-sequence ids (E,) and the pad id that fills finished rows.

    ``ignored`` (N, L) marks prompt positions that penalties and n-gram bans do not see (padding);
    ``generator`` makes sampling reproducible; ``keep_scores`` / ``keep_logits`` keep every step's
    processed scores / raw logits in the result; ``on_step`` (greedy and sampling) is called after each
    step with the (N,) new ids and their (N,) raw log-probabilities; ``stop`` is asked after each step
    (greedy, sampling and beam search) whether to end now (nobody wants more tokens: the result is then
    incomplete).
    """

    decoder: Decoder
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    settings: DecodingSettings
    eos_ids: torch.Tensor
    pad: int
    ignored: torch.Tensor | None = None
    generator: torch.Generator | None = None
    keep_scores: bool = False
    keep_logits: bool = False
    on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    stop: Callable[[], bool] | None = None


@dataclass
class Decoded:
    """What a decoding loop produced.

    ``sequences`` (R, L + new): the prompt and new ids (R = N rows for greedy and sampling; batch x
    ``num_return_sequences`` best hypotheses for beam search). ``token_logprobs`` (R, new): each new
    token's raw log-probability (the model's log-softmax before any processing; 0 after a row ended).
    ``scores`` / ``logits``: per step, the (N, V) processed scores / raw logits of every decoded row (for
    beam search N = batch x beams), when the job kept them.
    Beam search also gives ``sequences_scores`` (R,) and ``beam_indices`` (R, new): the row each new
    token was chosen from, -1 after the hypothesis ended.
    """

    sequences: torch.Tensor
    token_logprobs: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    sequences_scores: torch.Tensor | None = None
    beam_indices: torch.Tensor | None = None


class _StepLog:
    """The per-step tensors a job asked to keep."""

    def __init__(self, job: DecodeJob) -> None:
        self.scores: list[torch.Tensor] | None = [] if job.keep_scores else None
        self.logits: list[torch.Tensor] | None = [] if job.keep_logits else None

    def add(self, scores: torch.Tensor, logits: torch.Tensor) -> None:
        if self.scores is not None:
            self.scores.append(scores)
        if self.logits is not None:
            self.logits.append(logits)

    def result(self, sequences: torch.Tensor, token_logprobs: torch.Tensor, **beam: torch.Tensor) -> Decoded:
        return Decoded(
            sequences,
            token_logprobs,
            None if self.scores is None else tuple(self.scores),
            None if self.logits is None else tuple(self.logits),
            **beam,
        )


def decode(job: DecodeJob, streamer: Streamer | None = None) -> Decoded:
    """Run the job's decoding: :func:`beam_search` when ``num_beams > 1``, else :func:`sample` (greedy or
    sampling, streamed to ``streamer``; see :func:`check_streaming`)."""
    return beam_search(job) if job.settings.num_beams > 1 else sample(job, streamer)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(N, V) raw logits and (N,) ids -> (N,) log-softmax of each id."""
    return logits.gather(1, tokens.unsqueeze(1)).squeeze(1) - logits.logsumexp(dim=-1)


def sample(job: DecodeJob, streamer: Streamer | None = None) -> Decoded:
    """Greedy or sampled decoding, one token per row per step (ids and attention written in place);
    finished rows are filled with the pad id. ``streamer`` gets each step's new ids (ending it is the
    caller's)."""
    decoder, sequences, settings, eos_ids, pad = job.decoder, job.sequences, job.settings, job.eos_ids, job.pad
    rows, length = sequences.shape
    ids = F.pad(sequences, (0, settings.max_new_tokens), value=pad)  # (B, T + max_new)
    attention = F.pad(job.attention_mask, (0, settings.max_new_tokens), value=1)
    logprobs = torch.zeros((rows, settings.max_new_tokens), dtype=torch.float32, device=sequences.device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=sequences.device)
    log = _StepLog(job)
    for step in range(settings.max_new_tokens):
        sequences = ids[:, : length + step]
        logits = decoder(sequences, attention[:, : length + step])
        scores = process_scores(logits, sequences, settings, step, eos_ids, job.ignored)
        log.add(scores, logits)
        tokens = torch.where(unfinished, choose_tokens(scores, settings.do_sample, job.generator), pad)
        ids[:, length + step] = tokens
        logprobs[:, step] = torch.where(unfinished, token_logprobs(logits, tokens), 0.0)
        if streamer is not None:
            streamer.put(tokens.cpu())
        if job.on_step is not None:
            job.on_step(tokens, logprobs[:, step])
        unfinished &= ~torch.isin(tokens, eos_ids)
        if not bool(unfinished.any()) or _asked_to_stop(job):
            return log.result(ids[:, : length + step + 1].clone(), logprobs[:, : step + 1].clone())
    return log.result(ids, logprobs)


def _asked_to_stop(job: DecodeJob) -> bool:
    return job.stop is not None and job.stop()


def beam_search(job: DecodeJob) -> Decoded:
    """Beam search over the job's (B*K) expanded prompts; returns each batch item's
    ``num_return_sequences`` best hypotheses, best first."""
    decoder, prompts, attention_mask, settings = job.decoder, job.sequences, job.attention_mask, job.settings
    k = settings.num_beams
    prompt_len = prompts.shape[1]
    max_len = prompt_len + settings.max_new_tokens
    state = BeamState.start(prompts, k, max_len, job.pad)
    b = state.running.shape[0]
    log = _StepLog(job)
    for cur_len in range(prompt_len, max_len):
        sequences = state.running[:, :, :cur_len].reshape(b * k, cur_len)
        logits = decoder(sequences, attention_mask)
        raw = logits.log_softmax(dim=-1)
        log_probs = process_scores(raw, sequences, settings, cur_len - prompt_len, job.eos_ids, job.ignored)
        log.add(log_probs, logits)
        state, parents, stops = beam_step(
            state, log_probs, raw, cur_len, prompt_len, job.eos_ids, settings, job.generator
        )
        decoder.reorder(parents)
        attention_mask = F.pad(attention_mask, (0, 1), value=1)
        if beam_search_done(state, stops, settings.early_stopping) or _asked_to_stop(job):
            break
    n = settings.num_return_sequences
    new = int(state.finished_lengths[:, :n].max())
    indices = state.finished_indices[:, :n, :new].reshape(b * n, new)
    return log.result(
        state.finished[:, :n, : prompt_len + new].reshape(b * n, prompt_len + new),
        state.finished_logprobs[:, :n, :new].reshape(b * n, new).masked_fill(indices < 0, 0.0),
        sequences_scores=state.finished_scores[:, :n].reshape(b * n),
        beam_indices=indices,
    )
