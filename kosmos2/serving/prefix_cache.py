"""Each image's prefix, ``<s> <image>`` and the image slots, as keys and values that depend only on the
image: a small thread-safe LRU, so that a new prompt on a cached image prefills only its own tokens and
skips the vision encoder."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

DEFAULT_MAX_IMAGES = 8


@dataclass(frozen=True)
class PrefixEntry:
    """The decoder's keys and values over one image prefix."""

    keys: torch.Tensor  # (layers, heads, P, head_dim)
    values: torch.Tensor  # (layers, heads, P, head_dim)


class PrefixCache:
    """A thread-safe LRU of :class:`PrefixEntry` by :func:`prefix_key`, at most ``max_entries``."""

    def __init__(self, max_entries: int = DEFAULT_MAX_IMAGES) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> PrefixEntry | None:
        """The entry (now the most recently used) or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: PrefixEntry) -> None:
        """Store ``entry``, evicting the least recently used ones beyond ``max_entries``."""
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
