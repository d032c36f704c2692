"""Did the model put the box in the right place: pure scoring of a generated text against its target."""

from __future__ import annotations

from .. import grounding
from ..detection import iou

IOU_HIT = 0.5  # a box counts as found at this overlap (the paper's threshold)


def box_hits(target: str, generated: str, prompt: str = "", threshold: float = IOU_HIT) -> tuple[int, int]:
    """(hits, entities): of the target text's grounded entities, how many the generated text (both full
    texts: prompt and answer) also has, at the same place in order, with the same phrase and a first box
    overlapping one of the target's boxes by ``threshold`` or more. Entities the ``prompt`` already holds
    (a phrase with its box, given to the model) are not counted."""
    _, want = grounding.extract_entities(target)
    _, got = grounding.extract_entities(generated)
    given = len(grounding.extract_entities(prompt)[1]) if prompt else 0
    hits = 0
    for k, (phrase, _, boxes) in enumerate(want):
        if k < given:
            continue
        if k < len(got) and got[k][0] == phrase and got[k][2]:
            hits += any(iou(got[k][2][0], box) >= threshold for box in boxes)
    return hits, len(want) - given
