"""How a model's weights are held: the floating-point dtypes it loads in, and the int8 mode."""

from __future__ import annotations

import torch

INT8_MODES = ("int8",)


def resolve_dtype(dtype: torch.dtype | str | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """A floating-point ``torch.dtype`` from a dtype, its name (``"bfloat16"``, ``"torch.float16"``,
    ``"half"``), or None (``default``); anything else raises ``ValueError``."""
    if dtype is None:
        return default
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        dtype = resolved
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    return dtype


def check_quantize(quantize: str | None, device: torch.device | str) -> None:
    """Raise ``ValueError`` unless ``quantize`` is None, or one of :data:`INT8_MODES` on a CPU ``device``."""
    if quantize is None:
        return
    if quantize not in INT8_MODES:
        raise ValueError(f"quantize must be None or one of {INT8_MODES}, got {quantize!r}")
    if torch.device(device).type != "cpu":
        raise ValueError(f"int8 weights need the model on the CPU, not {device}")
