"""Model output containers: dataclasses readable by attribute, by key and by position."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .cache import KVCache


class ModelOutput:
    """Base for output dataclasses: ``out.logits``, ``out["logits"]`` and ``out[0]`` all work.

    Keys and positions cover only the fields that are set (not ``None``), as in ``transformers``.
    """

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # set by each subclass's @dataclass

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for _, v in self.items())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]


@dataclass
class VisionModelOutput(ModelOutput):
    """Output of the vision encoder: the last layer (before ``post_layernorm``), its normed class token, and
    optionally every layer's input/output and attention weights."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class TextModelOutput(ModelOutput):
    """Output of the text decoder (``hidden_states`` ends with the final layer-normed state)."""

    last_hidden_state: torch.Tensor
    past_key_values: KVCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class Kosmos2ModelOutput(TextModelOutput):
    """Output of ``Kosmos2Model``: the text decoder's, then the image's parts."""

    image_embeds: torch.Tensor | None = None
    projection_attentions: torch.Tensor | None = None
    vision_model_output: VisionModelOutput | None = None


@dataclass
class Kosmos2ForConditionalGenerationModelOutput(ModelOutput):
    """Output of ``Kosmos2ForConditionalGeneration``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_embeds: torch.Tensor | None = None
    projection_attentions: torch.Tensor | None = None
    vision_model_output: VisionModelOutput | None = None


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """``generate(..., return_dict_in_generate=True)`` for greedy decoding and sampling."""

    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    cache: KVCache | None = None


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """``generate(..., return_dict_in_generate=True)`` for beam search."""

    sequences: torch.Tensor
    sequences_scores: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.Tensor | None = None
    cache: KVCache | None = None
