"""Small building blocks shared by the model's modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """``nn.Linear`` with faster CPU kernels for inference.

    - One bfloat16 row (a batch-1 decode step): PyTorch's CPU matrix-vector product (``addmv``)
      streams bfloat16 weights about a quarter faster than the general matrix multiply behind
      ``F.linear``, and decode time is almost all weight streaming.
    - Float32 after :meth:`pack` (see ``kosmos2.packing``): oneDNN's product on a copy of the weight in
      its blocked layout, used while the weight is unchanged and no gradient is wanted.

    Every other input takes ``F.linear``.
    """

    _packed: tuple[torch.Tensor, int, int] | None = None  # (oneDNN weight, weight's data_ptr, its version)

    def pack(self) -> None:
        """Make the oneDNN copy of the (float32, CPU) weight."""
        weight = self.weight.detach()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"only float32 CPU weights can be packed, not {weight.dtype} on {weight.device}")
        self._packed = (torch.ops.mkldnn._reorder_linear_weight(weight, None), weight.data_ptr(), self.weight._version)

    def unpack(self) -> None:
        """Drop the oneDNN copy."""
        self._packed = None

    def packed_weight(self) -> torch.Tensor | None:
        """The oneDNN copy, if there is one and the weight has not changed since it was made."""
        if self._packed is None:
            return None
        packed, pointer, version = self._packed
        if self.weight.data_ptr() != pointer or self.weight._version != version:
            self._packed = None  # stale: moved, converted, reassigned or edited in place
            return None
        return packed

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        self.packed_weight()  # frees the copy now if the weight moved or was converted (e.g. to the GPU)
        return module

    def __getstate__(self) -> dict:
        # oneDNN tensors cannot be copied or pickled: a copy (deepcopy, torch.save) computes unpacked
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            if x.dtype == torch.bfloat16 and x.numel() == self.in_features:
                row = x.reshape(self.in_features)
                out = torch.mv(self.weight, row) if self.bias is None else torch.addmv(self.bias, self.weight, row)
                return out.view(*x.shape[:-1], self.out_features)
            if (x.dtype == torch.float32 and self._packed is not None
                    and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                    and (packed := self.packed_weight()) is not None):
                out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), packed, self.bias,
                                                         "none", [], "")
                return out.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)
