"""What a generation is asked for: the checkpoint's ``GenerationConfig``, the checked
``DecodingSettings``, and the ``Streamer`` protocol (see :mod:`.stream` for the one to iterate)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import torch

from ..config import Kosmos2TextConfig


@dataclass
class GenerationConfig:
    """Decoding defaults stored with a checkpoint (``generation_config.json``)."""

    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 1

    @classmethod
    def from_text_config(cls, config: Kosmos2TextConfig) -> GenerationConfig:
        return cls(config.bos_token_id, config.eos_token_id, config.pad_token_id)

    @classmethod
    def from_json_file(cls, path: str | Path) -> GenerationConfig:
        """Read ``generation_config.json``, ignoring keys other than the special token ids."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


class Streamer(Protocol):
    """Receives the prompt ids (batch, len) first, then each step's new ids (batch,), then ``end()``."""

    def put(self, ids: torch.Tensor) -> None: ...

    def end(self) -> None: ...


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
            raise ValueError(
                f"greedy decoding gives one sequence per prompt: num_return_sequences must be 1 "
                f"(got {n}); use do_sample=True or num_beams >= {n}"
            )
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
            for name, value, unset in (
                ("temperature", self.temperature, 1.0),
                ("top_k", self.top_k, None),
                ("top_p", self.top_p, None),
            ):
                if value != unset:
                    warnings.warn(
                        f"`do_sample` is not set to `True`. However, `{name}` is set to `{value}` -- this flag is "
                        f"only used in sample-based generation modes. You should set `do_sample=True` or unset "
                        f"`{name}`.",
                        UserWarning,
                        stacklevel=4,
                    )
