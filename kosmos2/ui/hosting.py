"""Where the app runs: Hugging Face Spaces, and ZeroGPU, whose GPU is attached only inside ``@spaces.GPU``
functions, each call of which runs in a process forked for it. ``spaces`` must be imported before torch:
``app.py`` imports it first; this module finds it there."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

try:
    import spaces
except ImportError:
    spaces = None
ZERO_GPU = spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU"))
ON_SPACES = bool(os.environ.get("SPACE_ID"))  # Hugging Face Spaces sets it


def gpu_seconds(*_: Any, **values: Any) -> int:
    """The GPU time to ask ZeroGPU for one call, from its settings (the decorated function's arguments;
    a cached example's come by position and get the default)."""
    try:
        tokens = int(float(values.get("max_new_tokens", 128)))
        beams = int(float(values.get("num_beams", 1))) if values.get("decoding") == "beam" else 1
    except (TypeError, ValueError):  # a bad value: the call refuses it at once, so a short task suffices
        return 15
    return 15 + round(max(tokens, 1) * max(beams, 1) * 0.05)


def on_gpu(fn: Callable) -> Callable:
    """``fn`` as a ZeroGPU task (``spaces.GPU`` with a duration from its settings); elsewhere ``fn``."""
    return spaces.GPU(fn, duration=gpu_seconds) if ZERO_GPU else fn
