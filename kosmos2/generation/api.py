"""The public calls: ``generate`` (the model's ``generate``: the image, the prompt and the settings to a
:class:`DecodeJob` over an :class:`ImageDecoder`) and ``compute_transition_scores``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..cache import KVCache
from ..outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput, VisionModelOutput
from .loop import DecodeJob, check_prompt_shapes, check_streaming, decode, eos_id_list, left_padding
from .settings import DecodingSettings, GenerationConfig, Streamer


class GenerativeModel(Protocol):
    """What generation needs of a model (:class:`kosmos2.Kosmos2ForConditionalGeneration` is one): its
    defaults, device and dtype, the image's features, and the next token's logits."""

    generation_config: GenerationConfig
    config: Any  # a Kosmos2Config: its text_config sizes the KV cache

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def get_image_features(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, VisionModelOutput]: ...

    def next_token_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: KVCache | None = None,
        image_embeds: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class ImageDecoder:
    """A :class:`Decoder` over the text decoder's KV cache, with the image spliced in on the first call."""

    def __init__(
        self,
        model: GenerativeModel,
        image_embeds: torch.Tensor,
        image_mask: torch.Tensor,
        use_cache: bool,
        capacity: int,
    ) -> None:
        self.model = model
        self.image_embeds = image_embeds
        self.image_mask = image_mask
        rows = image_embeds.shape[0]
        self.cache = (
            KVCache.for_config(model.config.text_config, rows, capacity, model.dtype, model.device)
            if use_cache
            else None
        )

    def __call__(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids so far -> (N, V) float32 logits for the next token."""
        if self.cache is not None and self.cache.length > 0:
            ids, image, mask = sequences[:, self.cache.length :], None, None
        else:
            ids, image = sequences, self.image_embeds
            mask = F.pad(self.image_mask, (0, sequences.shape[1] - self.image_mask.shape[1]))
        return self.model.next_token_logits(
            ids, attention_mask, self.cache, image_embeds=image, image_embeds_position_mask=mask
        )

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


@torch.no_grad()
def generate(
    model: GenerativeModel,
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
            max_new_tokens=max_new_tokens,  # type: ignore[arg-type]  # None: DecodingSettings raises, saying why
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            no_repeat_ngram_size=no_repeat_ngram_size,
            repetition_penalty=repetition_penalty,
            num_return_sequences=num_return_sequences,
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
        job = DecodeJob(
            decoder,
            input_ids,
            attention_mask,
            settings,
            eos_ids,
            pad,
            ignored,
            generator,
            keep_scores=return_dict_in_generate and output_scores,
            keep_logits=return_dict_in_generate and output_logits,
        )
        out = decode(job, streamer)
    finally:
        if streamer is not None:
            streamer.end()
    if not return_dict_in_generate:
        return out.sequences
    if num_beams > 1:
        return GenerateBeamDecoderOnlyOutput(
            out.sequences,
            out.sequences_scores if output_scores else None,
            out.scores,
            out.logits,
            out.beam_indices,
            decoder.cache,
        )
    return GenerateDecoderOnlyOutput(out.sequences, out.scores, out.logits, decoder.cache)


def eos_tensor(model: GenerativeModel, eos_token_id: int | Sequence[int] | None = None) -> torch.Tensor:
    """(E,) end-of-sequence ids on the model's device: ``eos_token_id``, or the model's default."""
    eos = model.generation_config.eos_token_id if eos_token_id is None else eos_token_id
    return torch.tensor(eos_id_list(eos), device=model.device, dtype=torch.long)


def _prepare_inputs(
    model: GenerativeModel,
    pixel_values: torch.Tensor | None,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    image_embeds: torch.Tensor | None,
    image_mask: torch.Tensor | None,
    pad: int,
    eos_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and batch sizes; compute the image embeddings; default the attention mask."""
    input_ids, image_mask = check_prompt_shapes(input_ids, image_mask, attention_mask)
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
    tokens = sequences[:, sequences.shape[1] - length :].to(stacked.device)
    steps = torch.arange(length, device=stacked.device).expand_as(rows)
    return stacked[rows, steps, tokens].masked_fill(ended, 0.0)
