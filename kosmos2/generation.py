"""Text generation for KOSMOS-2: greedy, sampling and beam search over the decoder's KV cache.

Score processing, sampling and the beam-search step are pure functions on tensors; ``generate`` wires
them to the model. Token choices follow the reference implementation (``transformers`` 5.x), so the
same checkpoint and inputs give the same ids.
"""

from __future__ import annotations

import json
import queue
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from .cache import KVCache
from .config import Kosmos2TextConfig
from .outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

if TYPE_CHECKING:
    from .model import Kosmos2ForConditionalGeneration

_NEG = -1.0e9  # the reference's "impossible" beam score


@dataclass
class GenerationConfig:
    """Decoding defaults stored with a checkpoint (``generation_config.json``)."""

    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 1

    @classmethod
    def from_text_config(cls, config: Kosmos2TextConfig) -> "GenerationConfig":
        return cls(config.bos_token_id, config.eos_token_id, config.pad_token_id)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "GenerationConfig":
        """Read ``generation_config.json``, ignoring keys other than the special token ids."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


class Streamer(Protocol):
    """Receives the prompt ids (batch, len) first, then each step's new ids (batch,), then ``end()``."""

    def put(self, ids: torch.Tensor) -> None: ...

    def end(self) -> None: ...


class TokenStreamer:
    """A thread-safe streamer to iterate over while ``generate`` runs in another thread.

    Iterating yields each step's new token ids as a list of ints (one per batch row) and stops after
    ``end()``. With ``timeout`` (seconds) a step that takes longer raises ``queue.Empty``. The prompt ids
    of the last run are kept in ``prompt_ids``. ``end()`` may be called again (e.g. by a caller's error
    handler after ``generate`` already ended the stream): a run ends once.
    """

    _END = object()

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.prompt_ids: torch.Tensor | None = None
        self._queue: queue.Queue = queue.Queue()
        self._expect_prompt = True
        self._ended = False
        self._lock = threading.Lock()  # end() may come from another thread than put()

    def put(self, ids: torch.Tensor) -> None:
        with self._lock:
            if self._expect_prompt:
                self.prompt_ids = ids
                self._expect_prompt = self._ended = False
            else:
                self._queue.put(ids.reshape(-1).tolist())

    def end(self) -> None:
        with self._lock:
            if not self._ended:
                self._ended = self._expect_prompt = True
                self._queue.put(self._END)

    def __iter__(self) -> "TokenStreamer":
        return self

    def __next__(self) -> list[int]:
        item = self._queue.get(timeout=self.timeout)
        if item is self._END:
            raise StopIteration
        return item


@dataclass(frozen=True)
class DecodingSettings:
    """Validated decoding parameters (see ``generate``)."""

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        n = self.num_return_sequences
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"num_return_sequences must be an int >= 1, got {n!r}")
        if n > 1 and self.num_beams == 1 and not self.do_sample:
            raise ValueError(f"greedy decoding gives one sequence per prompt: num_return_sequences must be 1 "
                             f"(got {n}); use do_sample=True or num_beams >= {n}")
        if self.num_beams > 1 and n > self.num_beams:
            raise ValueError(f"num_return_sequences ({n}) must be at most num_beams ({self.num_beams})")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams must be an int >= 1, got {self.num_beams!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not self.do_sample:
            for name, value, unset in (("temperature", self.temperature, 1.0), ("top_k", self.top_k, None),
                                       ("top_p", self.top_p, None)):
                if value != unset:
                    warnings.warn(
                        f"`do_sample` is not set to `True`. However, `{name}` is set to `{value}` -- this flag is "
                        f"only used in sample-based generation modes. You should set `do_sample=True` or unset "
                        f"`{name}`.",
                        UserWarning,
                        stacklevel=4,
                    )


# ----------------------------------------------------------------------------- score processing


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
        return torch.cat([ban_repeated_ngrams(scores[i : i + 1], sequences[i : i + 1, ~ignored[i]], n)
                          for i in range(sequences.shape[0])])
    length = sequences.shape[1]
    if length < n:
        return scores
    prefix = sequences[:, length + 1 - n:]  # (B, n-1): the current suffix
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


# ----------------------------------------------------------------------------- beam search


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
    def start(cls, prompts: torch.Tensor, num_beams: int, max_len: int, pad_id: int) -> "BeamState":
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
            running=running, running_scores=scores, running_lengths=lengths, running_indices=indices,
            running_logprobs=logprobs, finished=running.clone(), finished_scores=torch.full_like(scores, _NEG),
            finished_lengths=lengths.clone(), finished_indices=indices.clone(), finished_logprobs=logprobs.clone(),
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
        torch.arange(b, device=parents.device).unsqueeze(1), parents, tokens]
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
    best_running = new.running_scores[:, :1] / (best_length ** settings.length_penalty)
    worst_finished = torch.where(new.is_finished, new.finished_scores.min(dim=1, keepdim=True).values, _NEG)
    new.improvable = state.improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
    return new, (beam_parents + offsets).view(-1), stops


def beam_search_done(state: BeamState, stops: torch.Tensor, early_stopping: bool | str) -> bool:
    """The reference's stopping rule: no improvement possible, or all slots full (early stopping), or
    every candidate of the last step stopped."""
    full = bool(state.is_finished.all()) and early_stopping is True
    return not (bool(state.improvable.any()) and not full and not bool(stops.all()))


# ----------------------------------------------------------------------------- the loop


class Decoder(Protocol):
    """What the decoding loops call: next-token logits for the ids so far, and beam reordering."""

    def __call__(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and (N, L) attention so far -> (N, V) float32 logits for the next token."""
        ...

    def reorder(self, index: torch.Tensor) -> None:
        """Keep (and duplicate) cached rows: row i becomes old row ``index[i]``."""
        ...


class ImageDecoder:
    """A :class:`Decoder` over the text decoder's KV cache, with the image spliced in on the first call."""

    def __init__(self, model: "Kosmos2ForConditionalGeneration", image_embeds: torch.Tensor,
                 image_mask: torch.Tensor, use_cache: bool, capacity: int) -> None:
        self.model = model
        self.image_embeds = image_embeds
        self.image_mask = image_mask
        rows = image_embeds.shape[0]
        self.cache = (
            KVCache.for_config(model.config.text_config, rows, capacity, model.dtype, model.device)
            if use_cache else None
        )

    def __call__(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids so far -> (N, V) float32 logits for the next token."""
        if self.cache is not None and self.cache.length > 0:
            ids, image, mask = sequences[:, self.cache.length:], None, None
        else:
            ids, image = sequences, self.image_embeds
            mask = F.pad(self.image_mask, (0, sequences.shape[1] - self.image_mask.shape[1]))
        text = self.model.text_model
        hidden = text.model(
            input_ids=ids, attention_mask=attention_mask, image_embeds=image, image_embeds_position_mask=mask,
            past_key_values=self.cache, use_cache=self.cache is not None,
        ).last_hidden_state
        return text.lm_head(hidden[:, -1]).float()

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


@torch.no_grad()
def generate(
    model: "Kosmos2ForConditionalGeneration",
    pixel_values: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    image_embeds_position_mask: torch.Tensor | None = None,
    use_cache: bool = True,
    max_new_tokens: int | None = None,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    streamer: Streamer | None = None,
    num_return_sequences: int = 1,
    return_dict_in_generate: bool = False,
    output_scores: bool = False,
    output_logits: bool = False,
) -> torch.Tensor | GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput:
    """Generate text after a prompt about an image; returns (batch, prompt + new) ids.

    The image goes through the vision encoder and projection once (or ``image_embeds`` are used).
    Greedy by default; ``do_sample`` samples (``temperature``, ``top_k``, ``top_p``; ``generator`` for
    reproducibility); ``num_beams > 1`` runs beam search. ``top_k=None`` means no top-k filter (the
    reference's sampling default is 50: pass ``top_k=50`` for its behaviour). Batches must be
    left-padded. Rows that end (EOS) are filled with ``pad_token_id``. ``streamer`` gets the prompt
    ids, then each step's new ids; ``end()`` is called when generation stops, also on an error.
    ``eos_token_id``/``pad_token_id`` default to ``model.generation_config``.

    ``num_return_sequences`` sequences per prompt (sampling: independent draws; beam search: the best
    hypotheses) come one after the other: (batch * num_return_sequences, ...). With
    ``return_dict_in_generate`` the result is a :class:`GenerateDecoderOnlyOutput` (or, for beam search,
    :class:`GenerateBeamDecoderOnlyOutput`): ``sequences``; ``scores`` (with ``output_scores``: per step, the
    processed scores the token was chosen from; log-probabilities for beam search) and ``logits`` (with
    ``output_logits``: per step, the raw logits), each (rows, vocab); for beam search ``sequences_scores``
    (with ``output_scores``) and ``beam_indices``; ``cache``. See :func:`compute_transition_scores`.
    """
    try:
        settings = DecodingSettings(
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,  # type: ignore[arg-type]
            temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping, no_repeat_ngram_size=no_repeat_ngram_size,
            repetition_penalty=repetition_penalty, num_return_sequences=num_return_sequences,
        )
        check_streaming(settings, streamer)
        pad = model.generation_config.pad_token_id if pad_token_id is None else pad_token_id
        if pad is None:
            raise ValueError("pad_token_id is needed (to fill finished rows) and the model has no default")
        eos_ids = eos_tensor(model, eos_token_id)
        input_ids, attention_mask, image_embeds, image_mask = _prepare_inputs(
            model, pixel_values, input_ids, attention_mask, image_embeds, image_embeds_position_mask, pad, eos_ids
        )
        copies = num_beams if num_beams > 1 else num_return_sequences
        if copies > 1:
            input_ids, attention_mask, image_embeds, image_mask = (
                t.repeat_interleave(copies, dim=0) for t in (input_ids, attention_mask, image_embeds, image_mask)
            )
        ignored = left_padding(attention_mask)
        decoder = ImageDecoder(model, image_embeds, image_mask, use_cache, input_ids.shape[1] + settings.max_new_tokens)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        job = DecodeJob(decoder, input_ids, attention_mask, settings, eos_ids, pad, ignored, generator,
                        keep_scores=return_dict_in_generate and output_scores,
                        keep_logits=return_dict_in_generate and output_logits)
        out = decode(job, streamer)
    finally:
        if streamer is not None:
            streamer.end()
    if not return_dict_in_generate:
        return out.sequences
    if num_beams > 1:
        return GenerateBeamDecoderOnlyOutput(out.sequences, out.sequences_scores if output_scores else None, out.scores,
                                             out.logits, out.beam_indices, decoder.cache)
    return GenerateDecoderOnlyOutput(out.sequences, out.scores, out.logits, decoder.cache)


def left_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) True on each row's positions before its first attended one (as the reference counts padding)."""
    first = (attention_mask != 0).int().argmax(dim=1, keepdim=True)  # (B, 1)
    return torch.arange(attention_mask.shape[1], device=attention_mask.device) < first


def eos_id_list(eos_token_id: int | Sequence[int] | None) -> list[int]:
    """The end-of-sequence ids as a list (``eos_token_id`` may be one id, several, or None)."""
    if eos_token_id is None:
        return []
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def eos_tensor(model: "Kosmos2ForConditionalGeneration", eos_token_id: int | Sequence[int] | None = None) -> torch.Tensor:
    """(E,) end-of-sequence ids on the model's device: ``eos_token_id``, or the model's default."""
    eos = model.generation_config.eos_token_id if eos_token_id is None else eos_token_id
    return torch.tensor(eos_id_list(eos), device=model.device, dtype=torch.long)


def check_streaming(settings: DecodingSettings, streamer: Streamer | None) -> None:
    """Beam search chooses its tokens only at the end, so it cannot stream."""
    if streamer is not None and settings.num_beams > 1:
        raise ValueError("streaming is not supported with beam search (num_beams > 1)")


def check_prompt_shapes(
    input_ids: torch.Tensor | None, image_embeds_position_mask: torch.Tensor | None, attention_mask: torch.Tensor | None
) -> None:
    """Raise ``ValueError`` unless ``input_ids`` is (batch, length > 0) and the image slot mask (required)
    and the attention mask (optional) have its shape."""
    if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids of shape (batch, length > 0) are required")
    if image_embeds_position_mask is None:
        raise ValueError("image_embeds_position_mask is required (the processor returns it)")
    for name, mask in (("image_embeds_position_mask", image_embeds_position_mask), ("attention_mask", attention_mask)):
        if mask is not None and mask.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(input_ids.shape)} like input_ids")


def _prepare_inputs(
    model: "Kosmos2ForConditionalGeneration",
    pixel_values: torch.Tensor | None,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    image_embeds: torch.Tensor | None,
    image_mask: torch.Tensor | None,
    pad: int,
    eos_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and batch sizes; compute the image embeddings; default the attention mask."""
    check_prompt_shapes(input_ids, image_mask, attention_mask)
    device = model.device
    input_ids = input_ids.to(device)
    batch = input_ids.shape[0]
    if attention_mask is None:
        # as the reference: infer padding from the pad id when it occurs (and differs from EOS)
        infer = bool((input_ids == pad).any()) and not bool((eos_ids == pad).any())
        attention_mask = input_ids.ne(pad).long() if infer else torch.ones_like(input_ids)
    if image_embeds is None:
        if pixel_values is None:
            raise ValueError("pass pixel_values or image_embeds")
        if pixel_values.shape[0] != batch:
            raise ValueError(f"batch size mismatch: {pixel_values.shape[0]} images but {batch} prompts")
        image_embeds = model.get_image_features(pixel_values.to(device))[0]
    elif image_embeds.shape[0] != batch:
        raise ValueError(f"batch size mismatch: {image_embeds.shape[0]} image embeddings but {batch} prompts")
    return input_ids, attention_mask.to(device), image_embeds.to(device), image_mask.to(device)


@dataclass(frozen=True)
class DecodeJob:
    """What a decoding loop runs on: the decoder, the (N, L) ids and attention so far, the settings, the
    end-of-sequence ids (E,) and the pad id that fills finished rows.

    ``ignored`` (N, L) marks prompt positions that penalties and n-gram bans do not see (padding);
    ``generator`` makes sampling reproducible; ``keep_scores`` / ``keep_logits`` keep every step's
    processed scores / raw logits in the result; ``on_step`` (greedy and sampling) is called after each
    step with the (N,) new ids and their (N,) raw log-probabilities; ``stop`` is asked after each step of
    beam search whether to end now (the request was abandoned: the result is then incomplete).
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
        return Decoded(sequences, token_logprobs, None if self.scores is None else tuple(self.scores),
                       None if self.logits is None else tuple(self.logits), **beam)


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
        if not bool(unfinished.any()):
            return log.result(ids[:, : length + step + 1].clone(), logprobs[:, : step + 1].clone())
    return log.result(ids, logprobs)


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
        state, parents, stops = beam_step(state, log_probs, raw, cur_len, prompt_len, job.eos_ids, settings,
                                          job.generator)
        decoder.reorder(parents)
        attention_mask = F.pad(attention_mask, (0, 1), value=1)
        if beam_search_done(state, stops, settings.early_stopping) or (job.stop is not None and job.stop()):
            break
    n = settings.num_return_sequences
    new = int(state.finished_lengths[:, :n].max())
    indices = state.finished_indices[:, :n, :new].reshape(b * n, new)
    return log.result(state.finished[:, :n, : prompt_len + new].reshape(b * n, prompt_len + new),
                      state.finished_logprobs[:, :n, :new].reshape(b * n, new).masked_fill(indices < 0, 0.0),
                      sequences_scores=state.finished_scores[:, :n].reshape(b * n), beam_indices=indices)


def compute_transition_scores(
    sequences: torch.Tensor,
    scores: Sequence[torch.Tensor],
    beam_indices: torch.Tensor | None = None,
    normalize_logits: bool = False,
) -> torch.Tensor:
    """The score of each generated token at its step: (R, new) from ``generate``'s ``sequences`` (R, L),
    its per-step ``scores`` (or ``logits``), and for beam search its ``beam_indices`` (R, new).

    ``normalize_logits`` applies a log-softmax over the vocabulary first (e.g. raw logits -> log-probs).
    Steps after a beam hypothesis ended (``beam_indices`` -1) score 0.
    """
    stacked = torch.stack(tuple(scores), dim=1)  # (rows, steps, V)
    if normalize_logits:
        stacked = stacked.log_softmax(dim=-1)
    if beam_indices is None:
        beam_indices = torch.arange(stacked.shape[0], device=stacked.device).unsqueeze(1).expand(-1, stacked.shape[1])
    ended = beam_indices < 0
    length = int((~ended).sum(dim=1).max())
    ended = ended[:, :length]
    rows = beam_indices[:, :length].long().masked_fill(ended, 0)
    tokens = sequences[:, sequences.shape[1] - length:].to(stacked.device)
    steps = torch.arange(length, device=stacked.device).expand_as(rows)
    return stacked[rows, steps, tokens].masked_fill(ended, 0.0)
