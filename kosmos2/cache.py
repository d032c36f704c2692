"""A key/value cache for the text decoder: preallocated per-layer tensors written in place."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import Kosmos2TextConfig


class KVCache:
    """Keys and values of every decoder layer, each (batch, heads, capacity, head_dim).

    ``length`` positions are filled. A forward pass calls ``reserve`` once, each layer ``update``,
    then ``advance``. The capacity grows when needed, but preallocating it (``capacity=``) avoids copies.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (batch_size, num_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0

    @classmethod
    def for_config(
        cls,
        config: Kosmos2TextConfig,
        batch_size: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        """An empty cache for a text decoder of ``config``."""
        heads = config.attention_heads
        return cls(config.layers, batch_size, heads, config.embed_dim // heads, capacity, dtype, device)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part of one layer's (keys, values)."""
        return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length]

    def reserve(self, new_tokens: int) -> None:
        """Make room for ``new_tokens`` more positions (reallocating only if the capacity is short)."""
        needed = self.length + new_tokens
        if needed <= self.capacity:
            return
        extra = max(needed - self.capacity, self.capacity)  # grow geometrically: no copy per decode step
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                store[i] = torch.cat([t, t.new_zeros(t.shape[0], t.shape[1], extra, t.shape[3])], dim=2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, T, hd) keys/values after the filled part; return all keys/values so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, new_tokens: int) -> None:
        """Mark ``new_tokens`` more positions as filled (after every layer has been updated)."""
        self.length += new_tokens

    def selected(self, index: torch.Tensor) -> KVCache:
        """A new cache of the rows ``index`` (repeats allowed), with room for one more position; this one
        is unchanged."""
        out = KVCache.__new__(KVCache)
        out.keys = [F.pad(t[:, :, : self.length].index_select(0, index), (0, 0, 0, 1)) for t in self.keys]
        out.values = [F.pad(t[:, :, : self.length].index_select(0, index), (0, 0, 0, 1)) for t in self.values]
        out.length = self.length
        return out

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search): row i becomes old row ``index[i]``."""
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                store[i] = t.index_select(0, index)
