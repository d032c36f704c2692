"""Loading the demo's model once per process: checkpoint, dtype and int8 mode from the environment, and
the offline fallback to the built-in tiny checkpoint."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..hub import CheckpointError
from ..precision import check_quantize, resolve_dtype
from ..processing import AutoProcessor, Kosmos2Processor
from ..tiny import write_tiny_checkpoint

if TYPE_CHECKING:
    from ..model import Kosmos2ForConditionalGeneration
    from ..serving import Batcher

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "microsoft/kosmos-2-patch14-224"
TINY_CHECKPOINT = "tiny"
MAX_BATCH_SIZE = 4  # concurrent requests' rows decoded together
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    """A model and its processor, ready to run."""

    model: Kosmos2ForConditionalGeneration
    processor: Kosmos2Processor
    batcher: Batcher = field(repr=False)  # the image prefix cache and batched users
    device: str
    checkpoint: str
    is_tiny: bool
    note: str = ""  # why the tiny checkpoint is in use, for the UI's banner
    quantize: str | None = None  # "int8": the experimental int8 text decoder


class ModelHolder:
    """Loads the model once per process, on first use (thread-safe).

    ``checkpoint`` defaults to ``$KOSMOS2_CHECKPOINT`` or the hub model; ``"tiny"`` (or
    ``force_tiny``) means the built-in tiny random checkpoint, which is also the fallback when
    the checkpoint cannot be obtained (offline): :attr:`LoadedModel.is_tiny` then says so.
    ``dtype`` (default ``$KOSMOS2_DTYPE``; else bfloat16 on CUDA, float32 on CPU) and ``quantize``
    (default ``$KOSMOS2_QUANTIZE``; ``"int8"``: the experimental int8 text decoder on CPU, see
    ``kosmos2.quantize``) are checked here, before anything loads.
    """

    def __init__(self, checkpoint: str | None = None, dtype: str | None = None, device: str | None = None,
                 force_tiny: bool = False, quantize: str | None = None) -> None:
        self.checkpoint = TINY_CHECKPOINT if force_tiny else (
            checkpoint or os.environ.get("KOSMOS2_CHECKPOINT") or DEFAULT_CHECKPOINT)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or os.environ.get("KOSMOS2_DTYPE") or None
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"KOSMOS2_DTYPE must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = resolve_dtype(dtype, default=torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.quantize = quantize or os.environ.get("KOSMOS2_QUANTIZE") or None
        try:
            check_quantize(self.quantize, self.device)
        except ValueError as e:
            raise ValueError(f"KOSMOS2_QUANTIZE: {e}") from e
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> LoadedModel | None:
        """The loaded model, or None before the first :meth:`get`."""
        return self._loaded

    def get(self) -> LoadedModel:
        """The model, loading it on the first call."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> LoadedModel:
        note = ""
        if self.checkpoint == TINY_CHECKPOINT:
            note = "the tiny checkpoint was requested"
        else:
            progress(f"Loading KOSMOS-2 from {self.checkpoint} on {self.device} (first request; this can take a while)...")
            try:
                return self._from(self.checkpoint, is_tiny=False)
            except CheckpointError as e:
                note = f"could not get {self.checkpoint}: {e}"
                log.warning("Falling back to the built-in tiny checkpoint: %s", note)
        folder = Path(tempfile.mkdtemp(prefix="kosmos2-tiny-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        progress(f"Writing the built-in tiny checkpoint (random weights) to {folder}...")
        write_tiny_checkpoint(folder)
        return self._from(str(folder), is_tiny=True, note=note)

    def _from(self, path: str, is_tiny: bool, note: str = "") -> LoadedModel:
        # imported on first load: building the app's UI needs torch, but not the model's code
        from ..model import Kosmos2ForConditionalGeneration
        from ..serving import Batcher, Engine

        start = time.perf_counter()
        processor = AutoProcessor.from_pretrained(path)
        model = Kosmos2ForConditionalGeneration.from_pretrained(path, dtype=self.dtype, device=self.device,
                                                                quantize=self.quantize)
        progress(f"Model ready in {time.perf_counter() - start:.1f} s.")
        return LoadedModel(model, processor, Batcher(Engine(model), max_batch_size=MAX_BATCH_SIZE), self.device,
                           path if is_tiny else self.checkpoint, is_tiny, note, self.quantize)


def progress(message: str) -> None:
    """A progress line for the person watching the terminal."""
    print(f"[kosmos2] {message}", file=sys.stderr, flush=True)
