"""Pure grounding logic: tag vocabulary, boxes <-> patch-index tokens, entity extraction.

No torch here: these functions work on plain Python values.

A normalised box is ``(x1, y1, x2, y2)`` with floats in [0, 1] (upper-left and lower-right
corners relative to the image's width and height). The image is cut into a ``grid`` x ``grid``
raster of cells numbered row-major; a box is written as the pair of cells holding its corners.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator, Sequence
from typing import Literal, overload

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
GRID = 32  # cells per side: sqrt(NUM_PATCH_INDEX_TOKENS)

Box = tuple[float, float, float, float]
PixelBox = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels of the image
PatchPair = tuple[int, int]
BoxInput = Box | PatchPair
# One entry per <phrase>: nothing, one box, or several boxes.
PhraseBoxes = None | BoxInput | list[BoxInput]
Entity = tuple[str, tuple[int, int], list[Box]]
_Part = tuple[str, tuple[int, int], list[PatchPair], int]  # see _entity_parts

_PHRASE = re.compile(r"<phrase>.+?</phrase>")
_ANY_TAG = re.compile(r"<.*?>")
_PAIR = r"<patch_index_(\d+)><patch_index_(\d+)>"
_ENTITY = re.compile(
    r"(?:<phrase>([^<]+)</phrase>)?<object>((?:<patch_index_\d+><patch_index_\d+>"
    r"</delimiter_of_multi_objects/>)*<patch_index_\d+><patch_index_\d+>)</object>"
)


def patch_index_token(index: int) -> str:
    """The token text of patch cell ``index`` (``<patch_index_0042>``)."""
    return f"<patch_index_{index:04d}>"


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_float(x: object) -> bool:
    return isinstance(x, float)


def validate_box(box: object) -> Box:
    """Check a normalised box and return it; raise ``ValueError`` naming what is wrong."""
    if not isinstance(box, tuple) or len(box) != 4:
        raise ValueError(f"A normalised box must be a tuple (x1, y1, x2, y2) of 4 floats, got {box!r}.")
    if all(_is_int(v) for v in box):
        raise ValueError(
            f"Box {box!r} holds 4 integers, which look like pixel coordinates: divide x by the image width "
            "and y by its height to get floats in [0, 1]."
        )
    if not all(_is_float(v) for v in box):
        raise ValueError(f"A normalised box must hold 4 floats, got {box!r}.")
    if not all(0.0 <= v <= 1.0 for v in box):
        raise ValueError(f"Box {box!r} has coordinates outside [0, 1].")
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"Box {box!r} is empty or inverted: it needs x2 > x1 and y2 > y1.")
    return box


def validate_patch_pair(pair: object, grid: int = GRID) -> PatchPair:
    """Check a pair of patch indices (upper-left cell, lower-right cell) and return it."""
    if not isinstance(pair, tuple) or len(pair) != 2 or not all(_is_int(v) for v in pair):
        raise ValueError(f"A patch-index pair must be a tuple of 2 ints, got {pair!r}.")
    first, second = pair
    if not all(0 <= v < grid * grid for v in pair):
        raise ValueError(f"Patch indices {pair!r} must lie in [0, {grid * grid - 1}].")
    if first // grid > second // grid or first % grid > second % grid:
        raise ValueError(f"Patch pair {pair!r}: the first cell must be above and left of (or equal to) the second.")
    return pair


def box_to_patch_indices(box: Box, grid: int = GRID) -> PatchPair:
    """The cells holding the upper-left and lower-right corners of a normalised box.

    ``first = floor(y1*grid)*grid + floor(x1*grid)``, ``second = ceil(y2*grid - 1)*grid + ceil(x2*grid - 1)``.
    """
    x1, y1, x2, y2 = validate_box(box)
    first = math.floor(y1 * grid) * grid + math.floor(x1 * grid)
    second = math.ceil(y2 * grid - 1) * grid + math.ceil(x2 * grid - 1)
    return first, second


def _cells_to_box(first: int, second: int, grid: int) -> Box:
    cell = 1.0 / grid
    (y1, x1), (y2, x2) = divmod(first, grid), divmod(second, grid)
    if x1 == x2 or y1 == y2:  # same cell, row or column: the box spans whole cells
        return x1 * cell, y1 * cell, (x2 + 1) * cell, (y2 + 1) * cell
    half = cell / 2
    return x1 * cell + half, y1 * cell + half, x2 * cell + half, y2 * cell + half


def patch_indices_to_box(first: int, second: int, grid: int = GRID) -> Box:
    """The normalised box of a pair of cells: cell edges when both cells share a row or a column
    (or are the same cell), cell centres otherwise."""
    validate_patch_pair((first, second), grid)
    return _cells_to_box(first, second, grid)


def object_markup(boxes: Sequence[BoxInput], grid: int = GRID) -> str:
    """``<object>…</object>`` with the patch-index tokens of ``boxes`` (normalised boxes or cell pairs),
    joined by ``</delimiter_of_multi_objects/>``."""
    pairs = []
    for box in boxes:
        first, second = box if len(box) == 2 else box_to_patch_indices(box, grid)
        pairs.append(patch_index_token(first) + patch_index_token(second))
    return "<object>" + "</delimiter_of_multi_objects/>".join(pairs) + "</object>"


def check_phrase_boxes(bboxes: object) -> list[PhraseBoxes] | None:
    """Check the boxes given with one prompt: ``None`` or a list with one entry per phrase, each
    ``None``, a box (tuple of 2 ints or 4 floats) or a list of boxes. Returns them unchanged."""
    if bboxes is None:
        return None
    if not isinstance(bboxes, list):
        raise ValueError(f"The boxes of one prompt must be None or a list (one entry per phrase), got {bboxes!r}.")
    for entry in bboxes:
        if entry is None:
            continue
        for box in entry if isinstance(entry, list) else [entry]:
            if not isinstance(box, tuple) or len(box) not in (2, 4):
                raise ValueError(
                    f"Each box must be a tuple of 2 ints (patch indices) or 4 floats (normalised x1, y1, x2, y2), "
                    f"got {box!r}. A phrase's entry is None, one box, or a list of boxes."
                )
            if len(box) == 2:
                validate_patch_pair(box)
            else:
                validate_box(box)
    return bboxes


def insert_object_tags(text: str, bboxes: list[PhraseBoxes] | None, grid: int = GRID) -> str:
    """Insert ``<object>…</object>`` with the patch-index tokens of each phrase's boxes after its
    ``</phrase>``; several boxes are joined by ``</delimiter_of_multi_objects/>``.

    ``bboxes`` has one entry per ``<phrase>…</phrase>`` (``None`` or an empty list: no object).
    ``None`` or an empty ``bboxes`` leaves the text as it is.
    """
    check_phrase_boxes(bboxes)
    if not bboxes:
        return text
    phrases = list(_PHRASE.finditer(text))
    if len(phrases) != len(bboxes):
        raise ValueError(
            f"bboxes has {len(bboxes)} entries but {text!r} has {len(phrases)} <phrase>…</phrase> pairs: "
            "give exactly one entry (None, a box or a list of boxes) per phrase."
        )
    parts, pos = [], 0
    for match, entry in zip(phrases, bboxes):
        parts.append(text[pos : match.end()])
        pos = match.end()
        boxes = entry if isinstance(entry, list) else [] if entry is None else [entry]
        if boxes:
            parts.append(object_markup(boxes, grid))
    parts.append(text[pos:])
    return "".join(parts)


def _tagless_length(text: str) -> int:
    return len(_ANY_TAG.sub("", text))


def _entity_parts(raw: str) -> Iterator[_Part]:
    """Per entity of ``raw``, in order: (name, span of the name in ``raw``, cell pairs, index of its first
    patch-index token among those of ``raw``)."""
    for match in _ENTITY.finditer(raw):
        phrase = match.group(1)
        pairs = [(int(a), int(b)) for a, b in re.findall(_PAIR, match.group(2))]
        first = raw.count("<patch_index_", 0, match.start(2))
        if phrase is not None:
            yield phrase, match.span(1), pairs, first
        else:
            at = match.start()
            for k, (a, b) in enumerate(pairs):
                yield f"<patch_index_{a}><patch_index_{b}>", (at, at), [(a, b)], first + 2 * k


def extract_entities(text: str, grid: int = GRID) -> tuple[str, list[Entity]]:
    """Caption and grounded entities of a generated text (the part after ``</image>``).

    The caption is the text with every ``<…>`` removed, stripped. An entity is an optional
    ``<phrase>…</phrase>`` directly followed by ``<object>`` with one or more patch pairs; it is
    ``(phrase, (start, end), [boxes])`` with the phrase's span in the caption. An object without a
    phrase gives one entity per box, named after its pair (``<patch_index_44><patch_index_863>``)
    with an empty span at the object's place.
    """
    return _entities_of(text, list(_entity_parts(text)), grid)


def _entities_of(raw: str, parts: Sequence[_Part], grid: int) -> tuple[str, list[Entity]]:
    caption_unstripped = _ANY_TAG.sub("", raw)
    lead = len(caption_unstripped) - len(caption_unstripped.lstrip())
    entities: list[Entity] = []
    for name, (start, end), cells, _ in parts:
        start = _tagless_length(raw[:start]) - lead + len(name) - len(name.lstrip())
        end = _tagless_length(raw[:end]) - lead - (len(name) - len(name.rstrip()))
        entities.append((name.strip(), (start, end), [_cells_to_box(a, b, grid) for a, b in cells]))
    return caption_unstripped.strip(), entities


def location_logprobs(
    ids: Sequence[int], logprobs: Sequence[float | None], location_ids: Collection[int], image_end_id: int
) -> list[float | None]:
    """The log-probabilities of the location (patch-index) tokens after the last ``</image>``
    (``image_end_id``) of a sequence of token ids, in order; ``logprobs`` has one entry per id (None for
    ids that were not generated)."""
    if len(ids) != len(logprobs):
        raise ValueError(f"{len(ids)} ids but {len(logprobs)} log-probabilities")
    start = max((i + 1 for i, t in enumerate(ids) if t == image_end_id), default=0)
    return [lp for t, lp in zip(ids[start:], logprobs[start:]) if t in location_ids]


def box_scores(text: str, patch_logprobs: Sequence[float | None]) -> list[list[float | None]]:
    """For each entity of ``text`` as :func:`extract_entities` lists them, the score of each of its boxes:
    p(first cell) * p(second cell | first cell), from the log-probabilities of the text's patch-index
    tokens in order (:func:`location_logprobs`). A box whose tokens were not both generated (given in
    the prompt) scores None."""
    return _scores_of(text, list(_entity_parts(text)), patch_logprobs)


def scored_entities(
    text: str, patch_logprobs: Sequence[float | None] | None = None, grid: int = GRID
) -> tuple[str, list[Entity], list[list[float | None]]]:
    """:func:`extract_entities` and :func:`box_scores` of ``text`` from one parse (without
    ``patch_logprobs`` every box scores None)."""
    parts = list(_entity_parts(text))
    caption, entities = _entities_of(text, parts, grid)
    if patch_logprobs is None:
        return caption, entities, [[None] * len(boxes) for _, _, boxes in entities]
    return caption, entities, _scores_of(text, parts, patch_logprobs)


def _scores_of(text: str, parts: Sequence[_Part], patch_logprobs: Sequence[float | None]) -> list[list[float | None]]:
    if text.count("<patch_index_") != len(patch_logprobs):
        raise ValueError(
            f"the text has {text.count('<patch_index_')} patch-index tokens but "
            f"{len(patch_logprobs)} log-probabilities were given"
        )
    scores = []
    for _, _, cells, first in parts:
        entity = []
        for k in range(len(cells)):
            a, b = patch_logprobs[first + 2 * k], patch_logprobs[first + 2 * k + 1]
            entity.append(None if a is None or b is None else math.exp(a + b))
        scores.append(entity)
    return scores


@overload
def post_process_generation(text: str, cleanup_and_extract: Literal[True] = True) -> tuple[str, list[Entity]]: ...
@overload
def post_process_generation(text: str, cleanup_and_extract: Literal[False]) -> str: ...
@overload
def post_process_generation(text: str, cleanup_and_extract: bool) -> str | tuple[str, list[Entity]]: ...
def post_process_generation(text: str, cleanup_and_extract: bool = True) -> str | tuple[str, list[Entity]]:
    """Keep the text after the last ``</image>``; with ``cleanup_and_extract`` return
    ``(caption, entities)`` as :func:`extract_entities` does, else that raw text."""
    after_image = text.split("</image>")[-1]
    return extract_entities(after_image) if cleanup_and_extract else after_image


def entities_to_pixel_boxes(
    entities: Sequence[Entity], width: int, height: int
) -> list[tuple[str, tuple[int, int], list[tuple[int, int, int, int]]]]:
    """The same entities with each normalised box turned into rounded pixel coordinates of an
    image of ``width`` x ``height`` (the processor squashes images, so x scales by the width and
    y by the height)."""
    if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
        raise ValueError(f"Image width and height must be positive ints, got {width!r} x {height!r}.")
    return [
        (
            phrase,
            span,
            [
                (round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height))
                for x1, y1, x2, y2 in boxes
            ],
        )
        for phrase, span, boxes in entities
    ]
