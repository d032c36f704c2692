"""KOSMOS-2 in plain PyTorch: processor, model and generation, without `transformers`.

The classes and calls are those of the ``transformers`` KOSMOS-2 classes::

    from PIL import Image
    from kosmos2 import AutoProcessor, Kosmos2ForConditionalGeneration

    model = Kosmos2ForConditionalGeneration.from_pretrained("microsoft/kosmos-2-patch14-224")
    processor = AutoProcessor.from_pretrained("microsoft/kosmos-2-patch14-224")
    inputs = processor(text="<grounding> An image of", images=Image.open("cat.jpg"), return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=64)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    caption, entities = processor.post_process_generation(text)  # [(phrase, (start, end), [box]), ...], boxes in 0..1

From a shell: ``kosmos2 cat.jpg`` (or ``python -m kosmos2 cat.jpg``) prints a grounded caption;
``kosmos2 --help`` lists the tasks and settings. ``python -m kosmos2.tiny DIR`` writes a tiny
checkpoint with random weights, for trying things offline.

Names are imported lazily, so ``import kosmos2.grounding`` stays light (no torch).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# MKL's strict conditional numerical reproducibility: its float32 products then give the same bits for any
# number of threads. Without it, on CPUs where MKL takes its AVX2 code paths (AMD's, and Intel's without
# AVX-512) a scaled score differs in the 7th digit between 1 and 2 threads, so a Ray worker (one thread)
# and a one-process run (all cores) would write different journals. MKL reads the variable on its first
# call, so this is set before this package runs torch; a value already in the environment is kept (it is
# too late if the process has run an MKL product before importing kosmos2).
MKL_REPRODUCIBILITY = "AUTO,STRICT"
os.environ.setdefault("MKL_CBWR", MKL_REPRODUCIBILITY)

_EXPORTS = {
    "Kosmos2Config": "config",
    "Kosmos2TextConfig": "config",
    "Kosmos2VisionConfig": "config",
    "Kosmos2Processor": "processing",
    "AutoProcessor": "processing",
    "Kosmos2Model": "model",
    "Kosmos2ForConditionalGeneration": "model",
    "UserError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kosmos2' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
