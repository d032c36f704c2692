"""The paper's accuracy measures, pure (no torch): a referring expression is found when the first box of its
phrase overlaps the true box by IoU 0.5 or more; a grounded phrase when one of its first ``k`` boxes overlaps
any of its true boxes; a caption's entities are matched to the truth phrase by phrase, box by box."""

from __future__ import annotations

from collections.abc import Sequence

from ..detection import iou
from ..grounding import PixelBox as Box
from ..training.metrics import IOU_HIT

PhraseBoxes = tuple[str, Sequence[Box]]  # a phrase and its boxes (pixels, x1 y1 x2 y2)


def phrase_boxes(entities: Sequence[PhraseBoxes], phrase: str) -> list[Box]:
    """The boxes of the first of ``entities`` whose phrase is ``phrase`` (spaces around either ignored) and
    that has boxes, in the order generated; empty when there is none (the protocol's miss)."""
    want = phrase.strip()
    for name, boxes in entities:
        if name.strip() == want and boxes:
            return list(boxes)
    return []


def found_at(ranked: Sequence[Box], truth: Sequence[Box], k: int, threshold: float = IOU_HIT) -> bool:
    """Whether one of the first ``k`` of ``ranked`` overlaps one of ``truth`` by ``threshold`` or more (k=1 with
    one true box: referring expression comprehension's Acc@0.5; any k: phrase grounding's R@k)."""
    return any(iou(box, t) >= threshold for box in ranked[:k] for t in truth)


def match_entities(
    predicted: Sequence[PhraseBoxes], truth: Sequence[PhraseBoxes], threshold: float = IOU_HIT
) -> tuple[int, int, list[float]]:
    """(true boxes found, true boxes, the IoU of each found one): each true box of a phrase is matched to at most
    one predicted box of the same phrase (the best overlap first), and counts as found at ``threshold``."""
    pool: dict[str, list[Box]] = {}
    for name, boxes in predicted:
        pool.setdefault(name.strip(), []).extend(boxes)
    found, total, ious = 0, 0, []
    for name, boxes in truth:
        left = pool.get(name.strip(), [])
        total += len(boxes)
        pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(left) for j, t in enumerate(boxes)), reverse=True)
        used_p: set[int] = set()
        used_t: set[int] = set()
        for overlap, i, j in pairs:
            if overlap < threshold:
                break
            if i in used_p or j in used_t:
                continue
            used_p.add(i)
            used_t.add(j)
            ious.append(overlap)
        found += len(used_t)
        pool[name.strip()] = [p for i, p in enumerate(left) if i not in used_p]
    return found, total, ious
