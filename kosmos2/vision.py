"""The CLIP ViT image encoder of KOSMOS-2 (module names follow the checkpoint)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import MultiHeadAttention
from .config import Kosmos2VisionConfig
from .layers import Linear
from .outputs import VisionModelOutput


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class VisionEmbeddings(nn.Module):
    """Bias-free conv patch embedding, a learned class token in front, learned positions."""

    def __init__(self, config: Kosmos2VisionConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.class_embedding = nn.Parameter(torch.empty(h))
        self.patch_embedding = nn.Conv2d(config.num_channels, h, config.patch_size, config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.num_patches + 1, h)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (c.num_channels, c.image_size, c.image_size):
            raise ValueError(
                f"pixel_values must have shape (batch, {c.num_channels}, {c.image_size}, {c.image_size}), "
                f"got {tuple(pixel_values.shape)}"
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, h, g, g)
        patches = patches.flatten(2).transpose(1, 2)  # (B, g*g, h)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight  # (B, 1+g*g, h)


class VisionMLP(nn.Module):
    def __init__(self, config: Kosmos2VisionConfig) -> None:
        super().__init__()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class VisionEncoderLayer(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: Kosmos2VisionConfig) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = MultiHeadAttention(h, config.num_attention_heads, dropout=config.attention_dropout)
        self.layer_norm1 = nn.LayerNorm(h, eps=eps)
        self.mlp = VisionMLP(config)
        self.layer_norm2 = nn.LayerNorm(h, eps=eps)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.self_attn(self.layer_norm1(x), need_weights=need_weights)
        x = x + attn
        return x + self.mlp(self.layer_norm2(x)), weights


class VisionEncoder(nn.Module):
    def __init__(self, config: Kosmos2VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(config) for _ in range(config.num_hidden_layers))


class VisionTransformer(nn.Module):
    def __init__(self, config: Kosmos2VisionConfig) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(h, eps=eps)  # sic: the checkpoint's spelling
        self.encoder = VisionEncoder(config)
        self.gradient_checkpointing = False
        self.post_layernorm = nn.LayerNorm(h, eps=eps)

    def forward(
        self, pixel_values: torch.Tensor, output_attentions: bool = False, output_hidden_states: bool = False
    ) -> VisionModelOutput:
        x = self.pre_layrnorm(self.embeddings(pixel_values))  # (B, 1+P, h)
        hidden_states = [x] if output_hidden_states else None
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        for layer in self.encoder.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, weights = checkpoint(layer, x, output_attentions, use_reentrant=False)
            else:
                x, weights = layer(x, need_weights=output_attentions)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(weights)
        return VisionModelOutput(
            last_hidden_state=x,
            pooler_output=self.post_layernorm(x[:, 0]),
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )


class Kosmos2VisionModel(nn.Module):
    """Wrapper whose ``model`` attribute gives the checkpoint's ``vision_model.model.*`` names."""

    def __init__(self, config: Kosmos2VisionConfig) -> None:
        super().__init__()
        self.model = VisionTransformer(config)

    def forward(
        self, pixel_values: torch.Tensor, output_attentions: bool = False, output_hidden_states: bool = False
    ) -> VisionModelOutput:
        return self.model(pixel_values, output_attentions, output_hidden_states)
