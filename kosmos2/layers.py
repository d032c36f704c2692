"""Small building blocks shared by the model's modules."""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

# Rows for which oneDNN's float32 product on the ordinary (row-major) weight beats PyTorch's default
# (MKL): measured on a 2-core Xeon with AVX-512, 2048- and 8192-wide weights, 4 rows cost 1.1-1.8x
# one row with oneDNN and 2-2.4x with MKL; from 1 to 3 rows and for long inputs MKL is as fast or faster.
ONEDNN_ROWS = range(4, 257)


def onednn_supported() -> bool:
    """Whether this machine and PyTorch build have oneDNN's float32 CPU product (x86-64 with mkldnn)."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


_ONEDNN = onednn_supported()


def cpu_kernel(rows: int, dtype: torch.dtype, onednn: bool = _ONEDNN) -> str:
    """The product a CPU ``Linear`` uses for ``rows`` input rows of ``dtype`` (no gradient wanted):

    - ``"addmv"`` for one float32 or bfloat16 row (a batch-1 decode step): the matrix-vector product
      streams the weights faster than the general matrix multiply (bfloat16 ~1.3x; float32 as fast, and
      ~1.2x on the 65k-row LM head), and decode time is almost all weight streaming;
    - ``"onednn"`` for float32 with a row count in :data:`ONEDNN_ROWS` (a few users decoded together);
    - ``"linear"`` (``F.linear``) otherwise.
    """
    if rows == 1 and dtype in (torch.float32, torch.bfloat16):
        return "addmv"
    if onednn and dtype == torch.float32 and rows in ONEDNN_ROWS:
        return "onednn"
    return "linear"


class Linear(nn.Linear):
    """``nn.Linear`` that picks its CPU product per call by the number of rows (see :func:`cpu_kernel`),
    on the one weight it holds (nothing is copied or re-laid out, so loading stays a memory map)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            kernel = cpu_kernel(x.numel() // self.in_features, x.dtype)
            if kernel == "addmv":
                row = x.reshape(self.in_features)
                out = torch.mv(self.weight, row) if self.bias is None else torch.addmv(self.bias, self.weight, row)
                return out.view(*x.shape[:-1], self.out_features)
            if kernel == "onednn":
                out = torch.ops.mkldnn._linear_pointwise(
                    x.reshape(-1, self.in_features), self.weight, self.bias, "none", [], ""
                )
                return out.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)
