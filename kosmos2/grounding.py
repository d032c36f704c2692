"""Pure grounding logic: tag vocabulary, boxes <-> patch-index tokens, entity extraction.

No torch here: these functions work on plain Python values.
"""

from __future__ import annotations

TAG_TOKENS = (
    "</doc>",
    "<image>",
    "</image>",
    "</chunk>",
    "</line>",
    "<phrase>",
    "</phrase>",
    "<object>",
    "</object>",
    "</delimiter_of_multi_objects/>",
    "<grounding>",
)
NUM_PATCH_INDEX_TOKENS = 1024


def patch_index_token(index: int) -> str:
    """The token text of patch cell ``index`` (``<patch_index_0042>``)."""
    return f"<patch_index_{index:04d}>"
