"""Comparing what the model produced with what was recorded, and the report (pure: plain values, no model)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ... import detection
from .expectations import ATOL, SCORE_SLICES, TEXT_FIELDS, Case, JsonEntity

# --------------------------------------------------------------------------------------------------
# Comparing a produced record with the recorded one (pure)


@dataclass(frozen=True)
class Produced:
    """What one prompt produced: the row's ids (padding included), its new ids (after the prompt, without
    the padding after EOS), the processed text (tags kept), the caption, the entities in the expectations
    file's JSON form, and the score slices (unbatched runs only)."""

    ids: list[int]
    new_ids: list[int]
    processed_text: str
    caption: str
    entities: list[JsonEntity]
    scores: dict[str, list[list[float]]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The fields as :func:`compare` reads them."""
        return {
            "ids": self.ids,
            "processed_text": self.processed_text,
            "caption": self.caption,
            "entities": self.entities,
            **self.scores,
        }


def json_entities(entities: Sequence[tuple[str, tuple[int, int], Sequence[Sequence[float]]]]) -> list[JsonEntity]:
    """Entities ``(phrase, (start, end), [boxes])`` as JSON lists, the expectations file's form."""
    return [
        [phrase, [int(s) for s in span], [[float(v) for v in box] for box in boxes]] for phrase, span, boxes in entities
    ]


def _compare_ids(expected: Sequence[int], got: Sequence[int], prompt_length: int | None) -> list[str]:
    where = first_difference(expected, got)
    if where is None:
        return []
    new = f" (new token {where - prompt_length + 1})" if prompt_length is not None and where >= prompt_length else ""
    want = expected[where] if where < len(expected) else "the end"
    have = got[where] if where < len(got) else "the end"
    return [
        f"ids differ at position {where}{new}: expected {want}, got {have} (lengths {len(expected)} and {len(got)})"
    ]


def _compare_text(name: str, expected: str, got: str) -> list[str]:
    where = first_difference(expected, got)
    if where is None:
        return []
    lo = max(0, where - 20)
    return [
        f"{name} differs at character {where}: expected …{expected[lo : where + 30]!r}…, got …{got[lo : where + 30]!r}…"
    ]


def _compare_entities(expected: Sequence[JsonEntity], got: Sequence[JsonEntity]) -> list[str]:
    problems = []
    for i, (want, have) in enumerate(zip(expected, got), start=1):
        want, have = json.loads(json.dumps(want)), json.loads(json.dumps(have))  # tuples -> lists
        if want[0] != have[0]:
            problems.append(f"entity {i}: phrase expected {want[0]!r}, got {have[0]!r}")
        if want[1] != have[1]:
            problems.append(f"entity {i} ({want[0]!r}): span expected {tuple(want[1])}, got {tuple(have[1])}")
        if want[2] != have[2]:
            problems.append(f"entity {i} ({want[0]!r}): boxes expected {want[2]}, got {have[2]}")
    if len(expected) != len(got):
        extra = [e[0] for e in (got[len(expected) :] or expected[len(got) :])]
        problems.append(
            f"entities: expected {len(expected)}, got {len(got)} "
            f"({'extra' if len(got) > len(expected) else 'missing'}: {', '.join(map(repr, extra))})"
        )
    return problems


def _compare_scores(
    name: str, expected: Sequence[Sequence[float]], got: Sequence[Sequence[float]] | None, atol: float
) -> list[str]:
    if got is None:
        return [f"{name}: no scores were produced"]
    want, have = torch.tensor(expected, dtype=torch.float64), torch.tensor(got, dtype=torch.float64)
    if want.shape != have.shape:
        return [f"{name}: shape expected {tuple(want.shape)}, got {tuple(have.shape)}"]
    diff = (want - have).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not worst <= atol:  # also catches NaN
        r, c = divmod(int(diff.argmax()), want.shape[1])
        return [
            f"{name}: max |difference| {worst:.2e} > {atol:g} at [{r}][{c}] "
            f"(expected {float(want[r, c]):.6f}, got {float(have[r, c]):.6f})"
        ]
    return []


def compare(
    expected: Mapping[str, Any], produced: Mapping[str, Any], atol: float = ATOL, prompt_length: int | None = None
) -> list[str]:
    """The mismatches of one produced record against the recorded fields (only fields that were recorded
    are compared): ids, texts and entities exactly, score slices within ``atol``. ``prompt_length``
    lets an id mismatch say which new token it is."""
    problems: list[str] = []
    for key, want in expected.items():
        if key == "ids":
            problems += _compare_ids(want, produced["ids"], prompt_length)
        elif key in TEXT_FIELDS:
            problems += _compare_text(key, want, produced[key])
        elif key == "entities":
            problems += _compare_entities(want, produced["entities"])
        elif key in SCORE_SLICES:
            problems += _compare_scores(key, want, produced.get(key), atol)
        else:
            raise ValueError(f"unknown recorded field {key!r}")
    return problems


def compare_case(case: Case, rows: Sequence[Produced], atol: float = ATOL) -> list[str]:
    """The mismatches of a case's produced rows (prefixed with the row for a batch)."""
    if len(rows) != len(case.expected):
        return [f"{len(rows)} rows produced for {len(case.expected)} prompts"]
    problems = []
    for i, (want, row) in enumerate(zip(case.expected, rows), start=1):
        prefix = f"row {i}: " if case.batched else ""
        prompt_length = len(row.ids) - len(row.new_ids) if not case.batched else None
        problems += [prefix + p for p in compare(want, row.record(), atol, prompt_length)]
    return problems


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """The first index where ``a`` and ``b`` differ (the shorter one's length if one is a prefix of the
    other), or None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``(x1, y1, x2, y2)``; 1.0 for two identical empty boxes."""
    return 1.0 if list(a) == list(b) else detection.iou(a, b)


def match_entities(reference: Sequence[JsonEntity], other: Sequence[JsonEntity]) -> list[tuple[JsonEntity, JsonEntity]]:
    """Pairs of entities with the same phrase, in order (each entity used once)."""
    pairs, used = [], set()
    for ref in reference:
        j = next((j for j, o in enumerate(other) if j not in used and o[0] == ref[0]), None)
        if j is not None:
            used.add(j)
            pairs.append((ref, other[j]))
    return pairs


def entity_iou(a: JsonEntity, b: JsonEntity) -> float:
    """Mean IoU of two entities' boxes, paired in order; a box without a partner counts 0."""
    boxes = max(len(a[2]), len(b[2]))
    if boxes == 0:
        return 1.0
    return sum(box_iou(x, y) for x, y in zip(a[2], b[2])) / boxes


@dataclass(frozen=True)
class Agreement:
    """How a mode's rows agree with float32's: the first differing new token (row, index) or None, and the
    IoU of each matched entity (same phrase), out of float32's entity count."""

    first_difference: tuple[int, int] | None
    ious: tuple[float, ...]
    entities: int

    def text(self, batched: bool) -> str:
        """A table cell: ``tokens identical; IoU 1.00 (2/2)``."""
        if self.first_difference is None:
            tokens = "tokens identical"
        else:
            row, index = self.first_difference
            tokens = f"tokens differ from new token {index + 1}" + (f" of row {row + 1}" if batched else "")
        if not self.entities:
            return f"{tokens}; no entities"
        iou = f"IoU {sum(self.ious) / len(self.ious):.2f}" if self.ious else "IoU -"
        return f"{tokens}; {iou} ({len(self.ious)}/{self.entities} matched)"


def agreement(reference: Sequence[Produced], other: Sequence[Produced]) -> Agreement:
    """Agreement of ``other``'s rows with ``reference``'s (float32's)."""
    first = None
    for row, (ref, oth) in enumerate(zip(reference, other)):
        where = first_difference(ref.new_ids, oth.new_ids)
        if where is not None:
            first = (row, where)
            break
    ious = [
        entity_iou(a, b) for ref, oth in zip(reference, other) for a, b in match_entities(ref.entities, oth.entities)
    ]
    return Agreement(first, tuple(ious), sum(len(r.entities) for r in reference))


# --------------------------------------------------------------------------------------------------
# The report


def max_score_difference(case: Case, rows: Sequence[Produced]) -> float | None:
    """The largest |recorded - produced| over a case's score slices (None when none were recorded or
    their shapes differ)."""
    worst = None
    for want, row in zip(case.expected, rows):
        for key in SCORE_SLICES:
            if key in want and key in row.scores:
                a = torch.tensor(want[key], dtype=torch.float64)
                b = torch.tensor(row.scores[key], dtype=torch.float64)
                if a.shape != b.shape or not a.numel():
                    return None
                worst = max(worst or 0.0, float((a - b).abs().max()))
    return worst


def _cell(case: Case, rows: Sequence[Produced], problems: list[str]) -> str:
    if problems:
        return f"MISMATCH ({len(problems)})"
    worst = max_score_difference(case, rows)
    return "match" + (f" (scores within {worst:.1e})" if worst is not None else "")


def report(cases: Sequence[Case], results: Mapping[str, list[list[Produced]]], problems: Sequence[list[str]]) -> str:
    """The table (one row per case: float32 against the record, each other mode against float32), a
    summary line and every mismatch."""
    others = [m for m in results if m != "float32"]
    head = ["case", "source", "image", "float32 vs recorded", *(f"{m} vs float32" for m in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (case, found) in enumerate(zip(cases, problems)):
        ref = results["float32"][i]
        cells = [
            case.name + (f" (batch of {len(case.prompts)})" if case.batched else ""),
            case.source,
            "JPEG round trip" if case.jpeg else "PNG",
            _cell(case, ref, found),
        ]
        cells += [agreement(ref, results[m][i]).text(case.batched) for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [c for c, p in zip(cases, problems) if p]
    lines.append("")
    lines.append(
        f"float32: {len(cases) - len(failed)}/{len(cases)} cases match the recorded outputs exactly"
        + ("." if not failed else f"; mismatches in: {', '.join(c.name for c in failed)}")
    )
    for case, found in zip(cases, problems):
        lines += [f"  {case.name}: {p}" for p in found]
    return "\n".join(lines)
