"""The app's annotated PNGs on disk: one fresh private file per result, in a folder pruned by count and
age, with Gradio's cached copies of them removed too."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from PIL import Image

OUTPUT_PREFIX = "kosmos2-"  # the annotated PNGs' names start with it


def save_png_tempfile(image: Image.Image, folder: str | None = None, prefix: str = OUTPUT_PREFIX) -> str:
    """Save ``image`` as PNG into a fresh private temporary file (never a shared name) in ``folder``
    (default: the system's temporary folder); return its path."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".png", dir=folder)
    with os.fdopen(fd, "wb") as f:
        image.save(f, format="PNG", compress_level=1)  # fast: level 6 costs ~0.2 s per megapixel
    return path


class OutputFolder:
    """A private temporary folder (removed at exit) of annotated PNGs, one fresh file per result, pruned
    before each save: files older than ``max_age_s`` go, then the oldest until fewer than ``max_files``
    remain. ``copies`` (optional) is a folder where a server keeps copies of these files under their names,
    one sub-folder each (Gradio's cache): the copies of this folder's files older than ``max_age_s`` are
    removed before each save, and all of them at exit. Thread-safe; a forked child (ZeroGPU) writes here
    too but removes nothing at its exit."""

    def __init__(self, max_files: int, max_age_s: float, copies: str | Path | None = None) -> None:
        self.max_files = max_files
        self.max_age_s = max_age_s
        self.copies = Path(copies) if copies is not None else None
        # made now, in the process that builds the app: a forked worker (ZeroGPU) writes here too
        self._path = tempfile.mkdtemp(prefix=OUTPUT_PREFIX + "out-")
        self._owner = os.getpid()
        self._prefix = f"{OUTPUT_PREFIX}{uuid.uuid4().hex[:8]}-"  # this folder's files (and their copies)
        self._lock = threading.Lock()
        atexit.register(self._remove)

    def _copies(self) -> list[Path]:
        if self.copies is None:
            return []
        return list(self.copies.glob(f"*/{self._prefix}*.png"))

    def _prune(self, files: list[Path], by_count: bool = True) -> None:
        dated = []
        for f in files:
            try:
                dated.append((f.stat().st_mtime, f))
            except FileNotFoundError:  # removed meanwhile (Gradio's own cache clean-up, another process)
                continue
        dated.sort()
        cutoff = time.time() - self.max_age_s
        for i, (mtime, old) in enumerate(dated):
            if mtime < cutoff or (by_count and len(dated) - i >= self.max_files):
                old.unlink(missing_ok=True)

    def remove_copies(self) -> None:
        """Remove every copy of this folder's files."""
        for copy in self._copies():
            copy.unlink(missing_ok=True)

    def _remove(self) -> None:
        if os.getpid() == self._owner:  # not in a forked child: the parent still serves these files
            shutil.rmtree(self._path, ignore_errors=True)
            self.remove_copies()

    def save(self, image: Image.Image) -> str:
        """Save ``image`` as a new PNG in the folder; return its path."""
        with self._lock:
            self._prune(list(Path(self._path).glob("*.png")))
            self._prune(self._copies(), by_count=False)  # by age only: a client may fetch a copy later
            return save_png_tempfile(image, self._path, prefix=self._prefix)
