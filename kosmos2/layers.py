"""Small building blocks shared by the model's modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """``nn.Linear`` with a faster kernel for one bfloat16 row on the CPU (a batch-1 decode step).

    For a single input row PyTorch's CPU matrix-vector product (``addmv``) streams bfloat16
    weights about a quarter faster than the general matrix multiply behind ``F.linear``, and
    decode time is almost all weight streaming. Every other input takes ``F.linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() == self.in_features:
            row = x.reshape(self.in_features)
            out = torch.mv(self.weight, row) if self.bias is None else torch.addmv(self.bias, self.weight, row)
            return out.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)
