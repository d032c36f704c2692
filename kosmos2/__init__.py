"""KOSMOS-2 in plain PyTorch: processor, model and generation, without `transformers`.

Names are imported lazily, so ``import kosmos2.grounding`` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Kosmos2Config": "config",
    "Kosmos2TextConfig": "config",
    "Kosmos2VisionConfig": "config",
    "Kosmos2Processor": "processing",
    "AutoProcessor": "processing",
    "Kosmos2Model": "model",
    "Kosmos2ForConditionalGeneration": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kosmos2' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
