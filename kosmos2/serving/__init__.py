"""Serving many users: :mod:`.rows` (a prompt as its image prefix and its own rest, and the prefix's key),
:mod:`.prefix_cache` (each image's prefix keys and values, an LRU), :mod:`.engine` (batched generation with
per-row positions), :mod:`.candidates` (detect's box candidates, on the engine's prefixes) and
:mod:`.batcher` (concurrent requests gathered into batches on one worker thread, each row streamed to its
own :class:`~kosmos2.generation.RowStream`)."""

from ..generation import RowStream
from .batcher import BATCH_SIZES_KEPT, Batcher, follow
from .candidates import LOCATE_ROWS, Located, locate
from .engine import Engine, Prepared, RowDecoder, layout
from .prefix_cache import DEFAULT_MAX_IMAGES, PrefixCache, PrefixEntry
from .rows import Row, check_one_sequence, prefix_key, split_batch, split_row

__all__ = [
    "BATCH_SIZES_KEPT",
    "Batcher",
    "DEFAULT_MAX_IMAGES",
    "Engine",
    "LOCATE_ROWS",
    "Located",
    "PrefixCache",
    "PrefixEntry",
    "Prepared",
    "Row",
    "RowDecoder",
    "RowStream",
    "check_one_sequence",
    "follow",
    "layout",
    "locate",
    "prefix_key",
    "split_batch",
    "split_row",
]
