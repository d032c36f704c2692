"""Text generation for KOSMOS-2: greedy, sampling and beam search over the decoder's KV cache.

Token choices follow the reference implementation (``transformers`` 5.x), so the same checkpoint and
inputs give the same ids. :mod:`.settings` (what is asked for), :mod:`.stream` (tokens handed to another
thread), :mod:`.scores` (score processing, pure), :mod:`.beam` (the beam-search step, pure), :mod:`.loop`
(the decoding loops over a :class:`Decoder`) and :mod:`.api` (``generate`` and
``compute_transition_scores``, the model's methods).
"""

from .api import GenerativeModel, ImageDecoder, compute_transition_scores, eos_tensor, generate
from .beam import BeamState, beam_search_done, beam_step
from .loop import (
    Decoded,
    DecodeJob,
    Decoder,
    beam_search,
    check_prompt_shapes,
    check_streaming,
    decode,
    eos_id_list,
    left_padding,
    sample,
    token_logprobs,
)
from .scores import (
    apply_repetition_penalty,
    ban_repeated_ngrams,
    choose_tokens,
    process_scores,
    suppress_tokens,
    top_k_filter,
    top_p_filter,
)
from .settings import DecodingSettings, GenerationConfig, Streamer
from .stream import RowStream, TokenStream, TokenStreamer

__all__ = [
    "BeamState",
    "DecodeJob",
    "Decoded",
    "Decoder",
    "DecodingSettings",
    "GenerationConfig",
    "GenerativeModel",
    "ImageDecoder",
    "Streamer",
    "RowStream",
    "TokenStream",
    "TokenStreamer",
    "apply_repetition_penalty",
    "ban_repeated_ngrams",
    "beam_search",
    "beam_search_done",
    "beam_step",
    "check_prompt_shapes",
    "check_streaming",
    "choose_tokens",
    "compute_transition_scores",
    "decode",
    "eos_id_list",
    "eos_tensor",
    "generate",
    "left_padding",
    "process_scores",
    "sample",
    "suppress_tokens",
    "token_logprobs",
    "top_k_filter",
    "top_p_filter",
]
