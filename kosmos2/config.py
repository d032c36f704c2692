"""Configuration dataclasses for KOSMOS-2.

The defaults are the architecture of ``microsoft/kosmos-2-patch14-224``. Configs are read
from a hub ``config.json``; keys that this implementation does not use are ignored, so files
written by old and new ``transformers`` versions both load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Kosmos2TextConfig:
    """The text decoder (a pre-norm transformer with sinusoidal positions and sub-layer norms)."""

    vocab_size: int = 65037
    max_position_embeddings: int = 2048
    embed_dim: int = 2048
    layers: int = 24
    ffn_dim: int = 8192
    attention_heads: int = 32
    activation_function: str = "gelu"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1  # on the embeddings, each sub-layer's output (training only)
    attention_dropout: float = 0.1  # on the attention weights, the projection's included
    activation_dropout: float = 0.0  # after the FFN's GELU
    layerdrop: float = 0.0  # chance of skipping a whole decoder block
    scale_embedding: bool = True
    use_cache: bool = True
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2

    # Aliases used by the seed document and by generic code.
    @property
    def hidden_size(self) -> int:
        return self.embed_dim

    @property
    def num_attention_heads(self) -> int:
        return self.attention_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.layers

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Kosmos2TextConfig:
        return cls(**_known_fields(cls, data))


@dataclass
class Kosmos2VisionConfig:
    """The CLIP ViT image encoder."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Kosmos2VisionConfig:
        return cls(**_known_fields(cls, data))


@dataclass
class Kosmos2Config:
    """Top-level KOSMOS-2 configuration: text and vision sub-configs plus the latent query count.

    ``Kosmos2Config()`` is the configuration of ``microsoft/kosmos-2-patch14-224``.
    Sub-configs may be given as dataclasses or as plain dicts (as in ``config.json``).
    """

    text_config: Kosmos2TextConfig = field(default_factory=Kosmos2TextConfig)
    vision_config: Kosmos2VisionConfig = field(default_factory=Kosmos2VisionConfig)
    latent_query_num: int = 64
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.text_config is None:
            self.text_config = Kosmos2TextConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = Kosmos2TextConfig.from_dict(self.text_config)
        if self.vision_config is None:
            self.vision_config = Kosmos2VisionConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = Kosmos2VisionConfig.from_dict(self.vision_config)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Kosmos2Config:
        """Build a config from a ``config.json`` dict, ignoring keys this implementation does not use."""
        return cls(**_known_fields(cls, data))

    @classmethod
    def from_json_file(cls, path: str | Path) -> Kosmos2Config:
        """Read a ``config.json`` file."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json``-compatible dict (with the hub's ``model_type`` and ``architectures``)."""
        data = dataclasses.asdict(self)
        data["model_type"] = "kosmos-2"
        data["architectures"] = ["Kosmos2ForConditionalGeneration"]
        data["text_config"]["model_type"] = "kosmos_2_text_model"
        data["vision_config"]["model_type"] = "kosmos_2_vision_model"
        return data

    def save(self, path: str | Path) -> None:
        """Write ``config.json`` to ``path`` (a file path)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
