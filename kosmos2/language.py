"""The KOSMOS-2 text decoder: image-embedding splice, sinusoidal positions, sub-layer-normed blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import MultiHeadAttention
from .cache import KVCache
from .config import Kosmos2TextConfig
from .layers import Linear
from .outputs import TextModelOutput


def position_ids_from_input_ids(
    input_ids: torch.Tensor, pad_token_id: int, past_length: int | torch.Tensor = 0
) -> torch.Tensor:
    """Positions counted over non-pad tokens, after ``past_length`` cached ones (int or per-row (B, 1)).

    Non-pad tokens get ``pad + past + (count of non-pad tokens up to and including them)``; pads get
    ``pad``. A decode step (one new token) thus gets ``past_length + 2`` with ``pad = 1``.
    """
    not_pad = input_ids.ne(pad_token_id).long()  # (B, T)
    return (torch.cumsum(not_pad, dim=1) + past_length) * not_pad + pad_token_id


def sinusoidal_positions(position_ids: torch.Tensor, dim: int, pad_token_id: int) -> torch.Tensor:
    """(…) ids -> (…, dim) float32 embeddings: [sin(p·f), cos(p·f)], f_i = 10000^(-i/(half-1)); pad rows zero."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=position_ids.device) * -(math.log(10000) / (half - 1))
    )
    angles = position_ids.to(torch.float32).unsqueeze(-1) * freqs  # (…, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.masked_fill(position_ids.eq(pad_token_id).unsqueeze(-1), 0.0)


def decoder_attention_mask(
    attention_mask: torch.Tensor | None, new_len: int, past_length: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Additive (B or 1, 1, new_len, past+new_len) mask: causal part + padding part, each finfo.min.

    Where both apply the sum overflows to -inf; a row is never all -inf because its own position is
    never causally masked, so no NaN appears (left-padded rows attend uniformly to their pads).
    """
    neg = torch.finfo(dtype).min
    total = past_length + new_len
    mask = None
    if new_len > 1:
        rows = torch.arange(new_len, device=device).unsqueeze(1) + past_length
        cols = torch.arange(total, device=device).unsqueeze(0)
        mask = torch.where(cols > rows, neg, 0.0).to(dtype)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        _check_attention_mask(attention_mask, new_len, past_length)
        padding = torch.where(attention_mask[:, None, None, :].bool(), 0.0, neg).to(dtype)  # (B,1,1,S)
        mask = padding if mask is None else padding + mask
    return mask


def _check_attention_mask(attention_mask: torch.Tensor, new_len: int, past_length: int) -> None:
    if attention_mask.shape[-1] != past_length + new_len:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[-1]} positions, expected {past_length + new_len} "
            f"({past_length} cached + {new_len} new)"
        )


def needs_explicit_mask(attention_mask: torch.Tensor | None, new_len: int, past_length: int) -> bool:
    """Whether attention needs an additive mask, or plain causal attention (SDPA's ``is_causal`` for a
    prompt, nothing for one new token) is the same: no padding, and not several tokens after a cache."""
    if attention_mask is not None:
        _check_attention_mask(attention_mask, new_len, past_length)
        if not bool(attention_mask.all()):
            return True
    return new_len > 1 and past_length > 0


class TextFFN(nn.Module):
    """fc1 -> GELU -> LayerNorm(ffn_dim) -> fc2."""

    def __init__(self, config: Kosmos2TextConfig) -> None:
        super().__init__()
        if config.activation_function != "gelu":
            raise ValueError(f"unsupported activation_function {config.activation_function!r} (only 'gelu')")
        self.fc1 = Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = Linear(config.ffn_dim, config.embed_dim)
        self.ffn_layernorm = nn.LayerNorm(config.ffn_dim, eps=config.layer_norm_eps)
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), self.activation_dropout, self.training)
        return F.dropout(self.fc2(self.ffn_layernorm(x)), self.dropout, self.training)


class TextBlock(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)) with an inner LayerNorm, then x + ffn(norm(x))."""

    def __init__(self, config: Kosmos2TextConfig, layer_idx: int) -> None:
        super().__init__()
        d, eps = config.embed_dim, config.layer_norm_eps
        self.layer_idx = layer_idx
        self.self_attn = MultiHeadAttention(d, config.attention_heads, eps, config.attention_dropout)
        self.dropout = config.dropout
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.ffn = TextFFN(config)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        head_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.self_attn(
            self.self_attn_layer_norm(x),
            mask=mask,
            cache=cache,
            layer_idx=self.layer_idx,
            head_mask=head_mask,
            need_weights=need_weights,
            causal=causal,
        )
        x = x + F.dropout(attn, self.dropout, self.training)
        return x + self.ffn(self.final_layer_norm(x)), weights


class TextTransformer(nn.Module):
    """Token embeddings (+ image embeddings), decoder blocks and the final LayerNorm."""

    def __init__(self, config: Kosmos2TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.embed_dim) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(TextBlock(config, i) for i in range(config.layers))
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    def embed(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
        image_embeds_position_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        past_length: int,
    ) -> torch.Tensor:
        """Token (or given) embeddings with the image embeddings spliced in, scaled, plus positions."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D)
        if image_embeds is not None:
            inputs_embeds = splice_image_embeds(inputs_embeds, image_embeds, image_embeds_position_mask)
        x = inputs_embeds * self.embed_scale
        if position_ids is None:
            pad = self.config.pad_token_id
            if input_ids is not None:
                position_ids = position_ids_from_input_ids(input_ids, pad, past_length)
            else:
                position_ids = torch.arange(x.shape[1], device=x.device) + (pad + 1 + past_length)
                position_ids = position_ids.expand(x.shape[0], -1)
        x = x + sinusoidal_positions(position_ids, x.shape[-1], self.config.pad_token_id).to(x.dtype)
        return F.dropout(x, self.config.dropout, self.training)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> TextModelOutput:
        if input_ids is not None and inputs_embeds is None:
            batch, new_len = input_ids.shape
        elif input_ids is None and inputs_embeds is not None:
            batch, new_len = inputs_embeds.shape[:2]
        else:
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if new_len == 0:
            raise ValueError("the input sequence is empty")
        cache = past_key_values
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"past_key_values must be the KVCache of an earlier output, got {type(cache).__name__}")
        if cache is None and use_cache:
            ref = self.embed_tokens.weight
            cache = KVCache.for_config(self.config, batch, new_len, ref.dtype, ref.device)
        past_length = cache.length if cache is not None else 0
        if cache is not None and cache.batch_size != batch:
            raise ValueError(f"past_key_values hold {cache.batch_size} rows but the input has {batch}")
        if past_length > 0:  # the image is already in the cache
            image_embeds = image_embeds_position_mask = None

        x = self.embed(input_ids, inputs_embeds, image_embeds, image_embeds_position_mask, position_ids, past_length)
        x = F.dropout(x, self.config.dropout, self.training)  # a second time, as the original does
        if (
            head_mask is None
            and not output_attentions
            and not needs_explicit_mask(attention_mask, new_len, past_length)
        ):
            mask, causal = None, new_len > 1
        else:
            mask, causal = decoder_attention_mask(attention_mask, new_len, past_length, x.dtype, x.device), False
        head_masks = _per_layer_head_mask(head_mask, len(self.layers), self.config.attention_heads)
        if cache is not None:
            cache.reserve(new_len)

        hidden_states = [x] if output_hidden_states else None
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        for layer, layer_head_mask in zip(self.layers, head_masks):
            if self.training and self.config.layerdrop > 0 and float(torch.rand([])) < self.config.layerdrop:
                continue
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, weights = checkpoint(
                    layer, x, mask, cache, layer_head_mask, output_attentions, causal, use_reentrant=False
                )
            else:
                x, weights = layer(x, mask, cache, layer_head_mask, output_attentions, causal)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(weights)
        if cache is not None:
            cache.advance(new_len)
        x = self.layer_norm(x)
        if hidden_states is not None:
            hidden_states[-1] = x
        return TextModelOutput(
            last_hidden_state=x,
            past_key_values=cache,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )


def splice_image_embeds(
    inputs_embeds: torch.Tensor, image_embeds: torch.Tensor, image_embeds_position_mask: torch.Tensor | None
) -> torch.Tensor:
    """Put each row's (N, D) image embeddings, in order, where its position mask is 1 (N ones per row)."""
    if image_embeds_position_mask is None:
        raise ValueError("image_embeds_position_mask is required to place the image embeddings")
    if image_embeds_position_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(
            f"image_embeds_position_mask has shape {tuple(image_embeds_position_mask.shape)}, "
            f"expected {tuple(inputs_embeds.shape[:2])} (like input_ids)"
        )
    if image_embeds.shape[0] != inputs_embeds.shape[0]:
        raise ValueError(f"batch size mismatch: {image_embeds.shape[0]} images but {inputs_embeds.shape[0]} text rows")
    slots = image_embeds_position_mask.bool()
    counts = slots.sum(dim=1)
    if bool((counts != image_embeds.shape[1]).any()):
        raise ValueError(
            f"each row of image_embeds_position_mask must have exactly {image_embeds.shape[1]} ones "
            f"(latent_query_num), got {counts.tolist()}"
        )
    return inputs_embeds.masked_scatter(slots.unsqueeze(-1), image_embeds.to(inputs_embeds.dtype))


def _per_layer_head_mask(head_mask: torch.Tensor | None, num_layers: int, num_heads: int) -> list[torch.Tensor | None]:
    """A (heads,) or (layers, heads) head mask as one entry per layer (``None`` entries without one)."""
    if head_mask is None:
        return [None] * num_layers
    if head_mask.ndim == 1:
        head_mask = head_mask.expand(num_layers, -1)
    if tuple(head_mask.shape) != (num_layers, num_heads):
        raise ValueError(
            f"head_mask must have shape ({num_heads},) or ({num_layers}, {num_heads}), got {tuple(head_mask.shape)}"
        )
    return list(head_mask)


class Kosmos2TextModel(nn.Module):
    """Wrapper whose ``model`` attribute gives the checkpoint's ``text_model.model.*`` names."""

    def __init__(self, config: Kosmos2TextConfig) -> None:
        super().__init__()
        self.model = TextTransformer(config)

    def forward(self, **kwargs) -> TextModelOutput:
        return self.model(**kwargs)


class Kosmos2TextForCausalLM(Kosmos2TextModel):
    """The decoder plus ``lm_head`` (no bias), tied to the token embeddings."""

    def __init__(self, config: Kosmos2TextConfig) -> None:
        super().__init__(config)
        self.lm_head = Linear(config.embed_dim, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make ``lm_head`` share the embedding matrix (again, e.g. after loading replaced it)."""
        self.lm_head.weight = self.model.embed_tokens.weight
