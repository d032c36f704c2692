"""Loading the demo's model once per process: checkpoint, dtype and int8 mode from the environment
(checked before anything loads), loading on first use or at start-up in the background with a status
(download progress included) for the page, and the offline fallback to the built-in tiny checkpoint."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import grounding
from ..errors import UserError
from ..hub import MODEL_FILES, CheckpointError, resolve_checkpoint
from ..precision import INT8_MODES, check_quantize, resolve_dtype
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
DOWNLOAD_LINE_S = 10.0  # a terminal line on the download's progress this often
ENVIRONMENT = ("KOSMOS2_CHECKPOINT", "KOSMOS2_DTYPE", "KOSMOS2_QUANTIZE")  # every KOSMOS2_* setting


class SettingError(UserError, ValueError):
    """A bad setting (a ``KOSMOS2_*`` variable or the argument standing for it); the message, one line,
    names it and what it accepts."""


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`SettingError` for a ``KOSMOS2_*`` variable of ``environ`` (default ``os.environ``)
    that is not one of :data:`ENVIRONMENT`: a typo, or a setting that no longer exists, would otherwise
    be ignored without a word."""
    environ = os.environ if environ is None else environ
    unknown = sorted(name for name in environ if name.startswith("KOSMOS2_") and name not in ENVIRONMENT)
    if unknown:
        raise SettingError(
            f"{', '.join(unknown)} {'is not a setting' if len(unknown) == 1 else 'are not settings'}; "
            f"the settings are {', '.join(ENVIRONMENT)}"
        )


@dataclass(frozen=True)
class LoadStatus:
    """Where loading the model stands: ``stage`` is "waiting" (not started), "downloading", "loading"
    (reading the weights), "ready" or "failed" (``error`` says why; the next request tries again)."""

    stage: str
    checkpoint: str
    since: float = field(default_factory=time.monotonic)  # when the stage began
    done: int = 0  # bytes downloaded so far
    total: int = 0  # bytes to download (0: not known yet)
    error: str = ""

    def describe(self) -> str:
        """One line for a person: what is happening, with the download's progress or the seconds spent."""
        seconds = f"{time.monotonic() - self.since:.0f} s"
        if self.stage == "waiting":
            return f"The model ({self.checkpoint}) loads on the first request."
        if self.stage == "downloading" and self.total:
            share = f"{100 * self.done / self.total:.0f} %"
            return (
                f"Downloading the model ({self.checkpoint}): {_sizes(self.done, self.total)} ({share}, "
                f"{seconds}); requests wait for it."
            )
        if self.stage == "downloading":
            return f"Getting the model's files ({self.checkpoint}) ({seconds}); requests wait for it."
        if self.stage == "loading":
            return f"Loading the model ({self.checkpoint}) into memory ({seconds}); requests wait for it."
        if self.stage == "failed":
            return f"The model ({self.checkpoint}) could not be loaded: {self.error}. The next request tries again."
        return f"The model ({self.checkpoint}) is ready."


def _sizes(done: int, total: int) -> str:
    """``done`` of ``total`` bytes in the total's unit: "0.35 of 6.66 GB", "212 of 625 KB"."""
    scale, unit, digits = (1e9, "GB", 2) if total >= 1e9 else (1e6, "MB", 1) if total >= 1e6 else (1e3, "KB", 0)
    return f"{done / scale:.{digits}f} of {total / scale:.{digits}f} {unit}"


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

    @cached_property
    def location_ids(self) -> tuple[int, ...]:
        """The ids of the location tokens ``<patch_index_0000>`` ... in cell order (looked up once)."""
        return tuple(
            self.processor.tokenizer.convert_tokens_to_ids(
                [grounding.patch_index_token(i) for i in range(grounding.NUM_PATCH_INDEX_TOKENS)]
            )
        )


class ModelHolder:
    """Loads the model once per process, on first use or from :meth:`start` (thread-safe); :attr:`status`
    says where loading stands.

    ``checkpoint`` defaults to ``$KOSMOS2_CHECKPOINT`` or the hub model; ``"tiny"`` (or
    ``force_tiny``) means the built-in tiny random checkpoint. A checkpoint named here or in
    ``$KOSMOS2_CHECKPOINT`` (:attr:`explicit`) that cannot be obtained raises ``CheckpointError`` on
    :meth:`get`; only the default hub model falls back to the tiny checkpoint (offline), with one
    ``[kosmos2]`` line saying why, and :attr:`LoadedModel.is_tiny` then says so; ``fallback=False``
    (``label``, whose labels must never come from random weights) makes it an error too.
    ``dtype`` (default ``$KOSMOS2_DTYPE``; else bfloat16 on CUDA, float32 on CPU) and ``quantize``
    (default ``$KOSMOS2_QUANTIZE``; ``"int8"``: the experimental int8 text decoder on CPU, see
    ``kosmos2.quantize``) are checked here, with the names of the ``KOSMOS2_*`` variables
    (:func:`check_environment`), before anything loads: a bad one raises :class:`SettingError`.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        force_tiny: bool = False,
        quantize: str | None = None,
        fallback: bool = True,
    ) -> None:
        check_environment()
        named = TINY_CHECKPOINT if force_tiny else (checkpoint or os.environ.get("KOSMOS2_CHECKPOINT") or None)
        self.checkpoint = named or DEFAULT_CHECKPOINT
        self.explicit = named is not None  # named by the user: no silent fallback if it cannot be loaded
        self.fallback = fallback and not self.explicit
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or os.environ.get("KOSMOS2_DTYPE") or None
        if dtype is not None and dtype not in DTYPES:
            raise SettingError(f"KOSMOS2_DTYPE must be one of {', '.join(DTYPES)} (or unset), got {dtype!r}")
        self.dtype = resolve_dtype(dtype, default=torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.quantize = quantize or os.environ.get("KOSMOS2_QUANTIZE") or None
        if self.quantize is not None and self.quantize not in INT8_MODES:
            raise SettingError(f"KOSMOS2_QUANTIZE must be {' or '.join(INT8_MODES)} (or unset), got {self.quantize!r}")
        try:
            check_quantize(self.quantize, self.device)
        except ValueError as e:  # int8 on a GPU
            raise SettingError(f"KOSMOS2_QUANTIZE={self.quantize}: {e}") from e
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()
        self._status = LoadStatus("waiting", self.checkpoint)
        self._starter: threading.Thread | None = None
        self._last_line = 0.0  # when the terminal last heard of the download
        self._counting = threading.Lock()  # several files download at once
        self._starting = threading.Lock()  # not _lock, which a load holds throughout

    @property
    def loaded(self) -> LoadedModel | None:
        """The loaded model, or None before the first :meth:`get`."""
        return self._loaded

    @property
    def status(self) -> LoadStatus:
        """Where loading stands now."""
        return self._status

    def get(self) -> LoadedModel:
        """The model, loading it on the first call; a call made while it loads waits for it."""
        with self._lock:
            if self._loaded is None:
                try:
                    self._loaded = self._load()
                except Exception as e:
                    # a checkpoint's message is one line written for users; anything else stays in the log
                    internal = "an internal error (see the server log)"
                    why = str(e).rstrip(".") if isinstance(e, CheckpointError) else internal
                    self._status = replace(self._status, stage="failed", error=why)
                    raise
                self._status = LoadStatus("ready", self.checkpoint)
            return self._loaded

    def start(self) -> None:
        """Begin loading in a background thread, unless the model is loaded or loading already; requests
        meanwhile wait for it in :meth:`get`. A failure is logged and shown in :attr:`status`. It does not
        wait: the page's event loop calls it."""
        with self._starting:
            if self._loaded is not None or (self._starter is not None and self._starter.is_alive()):
                return
            if self._status.stage in ("waiting", "failed"):  # so that a page asking next sees the new attempt
                self._status = LoadStatus("loading", self.checkpoint)
            self._starter = threading.Thread(target=self._load_in_background, name="kosmos2-load", daemon=True)
            self._starter.start()

    def close(self) -> None:
        """Stop the loaded model's batcher worker (after its waiting requests): a thread still inside torch
        when the interpreter exits can abort it. Nothing to do if nothing was loaded."""
        if self._loaded is not None:
            self._loaded.batcher.close()

    def remove_tiny_files(self) -> None:
        """Remove the tiny checkpoint's temporary folder now, once it is loaded (else it goes at exit): for a
        process that is killed rather than exiting, such as a Ray actor. Nothing to do for another checkpoint."""
        if self._loaded is not None and self._loaded.is_tiny:
            shutil.rmtree(self._loaded.checkpoint)

    def _load_in_background(self) -> None:
        try:
            self.get()
        except Exception:
            log.exception("loading the model at start-up failed")

    def _load(self) -> LoadedModel:
        if self.checkpoint == TINY_CHECKPOINT:
            return self._tiny("the tiny checkpoint was requested")
        progress(
            f"Loading KOSMOS-2 from {self.checkpoint} on {self.device} (once per process; this can take a while)..."
        )
        try:
            self._status, self._last_line = LoadStatus("downloading", self.checkpoint), time.monotonic()
            processor = AutoProcessor.from_pretrained(self.checkpoint)  # small, and a repo without it fails here
            folder = resolve_checkpoint(self.checkpoint, MODEL_FILES, on_bytes=self._downloaded)
            return self._from(str(folder), is_tiny=False, processor=processor)
        except CheckpointError as e:
            if not self.fallback:
                raise
            log.debug("the default checkpoint could not be loaded", exc_info=True)
            progress(f"{e}: running on the built-in tiny checkpoint (random weights) instead.")
            return self._tiny(str(e), announce=False)

    def _tiny(self, note: str, announce: bool = True) -> LoadedModel:
        """The built-in tiny checkpoint, written to a temporary folder that is removed at exit."""
        folder = Path(tempfile.mkdtemp(prefix="kosmos2-tiny-"))
        owner = os.getpid()  # a forked child (ZeroGPU) exiting must not remove the parent's checkpoint

        def remove() -> None:
            if os.getpid() == owner:
                shutil.rmtree(folder, ignore_errors=True)

        atexit.register(remove)
        if announce:
            progress(f"Writing the built-in tiny checkpoint (random weights) to {folder}...")
        self._status = LoadStatus("loading", self.checkpoint)
        write_tiny_checkpoint(folder)
        return self._from(str(folder), is_tiny=True, note=note)

    def _from(self, path: str, is_tiny: bool, note: str = "", processor: Kosmos2Processor | None = None) -> LoadedModel:
        # imported on first load: building the app's UI needs torch, but not the model's code
        from ..model import Kosmos2ForConditionalGeneration
        from ..serving import Batcher, Engine

        start = time.perf_counter()
        if self._status.stage != "loading":  # (the tiny checkpoint's writing was loading already)
            self._status = LoadStatus("loading", self.checkpoint)
        processor = processor or AutoProcessor.from_pretrained(path)
        model = Kosmos2ForConditionalGeneration.from_pretrained(
            path, dtype=self.dtype, device=self.device, quantize=self.quantize
        )
        progress(f"Model ready in {time.perf_counter() - start:.1f} s.")
        return LoadedModel(
            model,
            processor,
            Batcher(Engine(model), max_batch_size=MAX_BATCH_SIZE),
            self.device,
            path if is_tiny else self.checkpoint,
            is_tiny,
            note,
            self.quantize,
        )

    def _downloaded(self, n: int, total: int) -> None:
        """Count ``n`` more bytes downloaded (of ``total``, which grows as each file starts), with a line in
        the terminal every ``DOWNLOAD_LINE_S``."""
        with self._counting:
            status = self._status = replace(self._status, done=self._status.done + n, total=total)
            now = time.monotonic()
            announce = now - self._last_line >= DOWNLOAD_LINE_S
            if announce:
                self._last_line = now
        if announce:
            progress(f"Downloaded {_sizes(status.done, status.total)}.")


def progress(message: str) -> None:
    """A progress line for the person watching the terminal."""
    print(f"[kosmos2] {message}", file=sys.stderr, flush=True)
