"""Experimental int8 mode for CPU: the text decoder's linear layers (and the LM head) with int8 weights.

Each weight row gets one symmetric scale (``max |w| / 127``); at run time the input is quantised per call
(dynamic, 8 bits with fbgemm's reduced range) and the product accumulates in int32 (fbgemm, PyTorch's
x86 int8 kernels). That reads a quarter of the float32 bytes per token and, on CPUs with VNNI, runs
faster than a bfloat16 matrix-vector product. The outputs differ from float32: greedy tokens may diverge
after a while, which the benchmark reports (``benchmarks.run --modes int8``). It cannot be verified on
the real weights here, so it stays off by default.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .precision import check_quantize


def int8_supported() -> bool:
    """Whether this PyTorch build has the fbgemm int8 CPU kernels."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8Linear(nn.Module):
    """Inference-only replacement for an ``nn.Linear``: int8 weights, one scale per output feature.

    Inputs of any float dtype and shape (…, in_features); the output has the input's dtype.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        check_quantize("int8", linear.weight.device)
        weight = linear.weight.detach().to(torch.float32)  # (out, in)
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.float64)
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32)
        with warnings.catch_warnings():  # the quantized-tensor API announces its deprecation on each use
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.to(torch.float32), self._packed, True).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of the text decoder and the LM head (if any) with an ``Int8Linear``, in place.

    ``model`` is a ``Kosmos2Model`` or ``Kosmos2ForConditionalGeneration`` on the CPU (any float dtype; the
    other parts keep it). Each layer is converted and its float weight dropped before the next, so memory
    falls as it goes. The vision encoder and the image-to-text projection stay as they are (they run once
    per image). Returns ``model``.
    """
    if not int8_supported():
        raise ValueError(
            "int8 mode needs PyTorch's fbgemm int8 kernels (an x86 CPU build); this build has "
            f"{torch.backends.quantized.supported_engines}"
        )
    _replace_linears(model.get_submodule("text_model"), Int8Linear)
    return model


def _replace_linears(root: nn.Module, make: type[nn.Module]) -> None:
    """Swap each ``nn.Linear`` under ``root`` for ``make(linear)``, one at a time (the float weight is
    released before the next is converted)."""
    targets = [name for name, module in root.named_modules() if isinstance(module, nn.Linear)]
    if not targets:
        raise ValueError("the text decoder has no float linear layers left (already converted?)")
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name)
        setattr(parent, attr, make(getattr(parent, attr)))
