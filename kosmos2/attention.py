"""Multi-head attention shared by the vision encoder, the image-to-text projection and the text decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Linear

if TYPE_CHECKING:
    from .cache import KVCache


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    need_weights: bool = False,
    causal: bool = False,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over (batch, heads, len, head_dim) tensors; ``mask`` is additive;
    ``dropout`` drops attention weights (0 outside training).

    ``causal`` masks keys after each query (the queries being the last T of the S keys); it needs
    ``mask`` None. SDPA does the work unless the weights are wanted or ``head_mask`` (heads,) scales
    them; then the weights are computed explicitly (softmax in the input dtype). Returns (output,
    weights or None).
    """
    if causal and mask is not None:
        raise ValueError("pass either an additive mask or causal=True, not both")
    if not need_weights and head_mask is None:
        is_causal = causal and q.shape[-2] > 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal), None
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    if mask is not None:
        scores = scores + mask
    if causal:
        t, s = scores.shape[-2:]
        allowed = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril(s - t)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = F.dropout(scores.softmax(dim=-1), p=dropout) if dropout else scores.softmax(dim=-1)
    if head_mask is not None:
        weights = weights * head_mask.view(1, -1, 1, 1).to(weights.dtype)
    return torch.matmul(weights, v), (weights if need_weights else None)


class MultiHeadAttention(nn.Module):
    """q/k/v/out projections with biases; optional LayerNorm on the merged heads before ``out_proj``."""

    def __init__(self, dim: int, num_heads: int, inner_norm_eps: float | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.q_proj = Linear(dim, dim)
        self.k_proj = Linear(dim, dim)
        self.v_proj = Linear(dim, dim)
        self.out_proj = Linear(dim, dim)
        self.inner_attn_ln = nn.LayerNorm(dim, eps=inner_norm_eps) if inner_norm_eps is not None else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, D) -> (B, H, L, head_dim)
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        head_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Queries from ``x`` (B, T, D); keys/values from ``context`` (B, S, D), default ``x``.

        With ``cache`` the new keys/values are written into it and attention runs over all cached ones.
        """
        source = x if context is None else context
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(source))
        v = self._heads(self.v_proj(source))
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        dropout = self.dropout if self.training else 0.0
        out, weights = attend(q, k, v, mask, head_mask, need_weights, causal, dropout)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # (B, T, D)
        if self.inner_attn_ln is not None:
            out = self.inner_attn_ln(out)
        return self.out_proj(out), weights
