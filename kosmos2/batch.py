"""The dict-like result of the processors, with attribute access and ``.to()``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

RETURN_TENSORS = (None, "pt", "np")


def as_tensor_type(value: Any, return_tensors: str | None) -> Any:
    """``value`` (a list of ints, of int rows, or of equally shaped arrays) as a torch tensor ("pt"),
    a numpy array ("np"), or unchanged (None)."""
    if return_tensors not in RETURN_TENSORS:
        raise ValueError(f"return_tensors must be one of {RETURN_TENSORS}, got {return_tensors!r}.")
    if return_tensors is None:
        return value
    if value and isinstance(value[0], list) and len({len(row) for row in value}) > 1:
        raise ValueError("Cannot build a tensor from sequences of different lengths: pass padding=True.")
    array = np.stack(value) if isinstance(value[0], np.ndarray) else np.array(value)
    return torch.from_numpy(array) if return_tensors == "pt" else array


class BatchFeature(dict):
    """Model inputs by name: ``batch["input_ids"]`` or ``batch.input_ids``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchFeature has no key {name!r}") from None

    def to(self, device_or_dtype: str | torch.device | torch.dtype) -> BatchFeature:
        """Move every tensor to a device (in place; returns the batch); a dtype casts only the
        floating tensors (``pixel_values``), never the ids and masks."""
        casts_dtype = isinstance(device_or_dtype, torch.dtype)
        for key, value in self.items():
            if torch.is_tensor(value) and (value.is_floating_point() or not casts_dtype):
                self[key] = value.to(device_or_dtype)
        return self
