"""Every instance of a phrase: candidate boxes from the model's location distributions, their scores,
non-maximum suppression, the filters, and a density map of where the model looks.

No torch here. A box is written as two location tokens, the upper-left cell ``i`` and the lower-right
cell ``j`` of the ``grid`` x ``grid`` raster (see :mod:`kosmos2.grounding`). After the prompt
``<phrase> …</phrase><object>`` the model gives a distribution p(i) over the first cell; after each
candidate first cell, a distribution p(j | i) over the second. A candidate box's score is
p(i) * p(j | i): the model's probability of writing exactly that box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .grounding import GRID, Box, patch_indices_to_box

FIRST_CELL_FLOOR = 1e-3  # first cells less likely than this are not tried
SECONDS_PER_FIRST = 3  # second cells kept per first cell


@dataclass(frozen=True)
class Candidate:
    """A candidate box: its two cells, p(first) and p(second | first)."""

    first: int
    second: int
    p_first: float
    p_second: float

    @property
    def score(self) -> float:
        """p(first) * p(second | first)."""
        return self.p_first * self.p_second

    @property
    def box(self) -> Box:
        """The normalised (x1, y1, x2, y2) box of the two cells."""
        return patch_indices_to_box(self.first, self.second)


def top_cells(probs: Sequence[float], k: int, floor: float = FIRST_CELL_FLOOR) -> list[tuple[int, float]]:
    """The ``k`` likeliest cells of a distribution over cells whose probability is at least ``floor``,
    as (cell, probability), likeliest first (ties: lower cell first)."""
    order = sorted(range(len(probs)), key=lambda c: (-probs[c], c))
    return [(c, probs[c]) for c in order[:k] if probs[c] >= floor]


def can_close(first: int, second: int, grid: int = GRID) -> bool:
    """Whether ``second`` can be a box's lower-right cell when ``first`` is its upper-left one: at or
    below it and at or right of it."""
    return second // grid >= first // grid and second % grid >= first % grid


def candidates_from(
    first: int, p_first: float, second_probs: Sequence[float], per_first: int = SECONDS_PER_FIRST, grid: int = GRID
) -> list[Candidate]:
    """The ``per_first`` best boxes that start at cell ``first`` (probability ``p_first``), from the
    distribution over second cells given it; cells that cannot close the box are skipped."""
    allowed = [c for c in range(len(second_probs)) if can_close(first, c, grid) and second_probs[c] > 0]
    allowed.sort(key=lambda c: (-second_probs[c], c))
    return [Candidate(first, c, p_first, second_probs[c]) for c in allowed[:per_first]]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def non_max_suppression(candidates: Sequence[Candidate], iou_limit: float) -> list[Candidate]:
    """The candidates best first, each dropped when it overlaps an already kept one by more than
    ``iou_limit``."""
    kept: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (-c.score, c.first, c.second)):
        if all(iou(c.box, k.box) <= iou_limit for k in kept):
            kept.append(c)
    return kept


def select(candidates: Sequence[Candidate], threshold: float, max_instances: int, iou_limit: float) -> list[Candidate]:
    """The boxes to show: after non-maximum suppression, those scoring at least ``threshold``, best
    first, at most ``max_instances``."""
    return [c for c in non_max_suppression(candidates, iou_limit) if c.score >= threshold][:max_instances]


def density_map(candidates: Sequence[Candidate], grid: int = GRID) -> list[list[float]]:
    """Where the model looks: on a raster of (2 * grid) x (2 * grid) half-cells (fine enough for every
    box edge), each half-cell's value is the summed score of the candidate boxes covering it, divided by
    the largest such sum (all zeros without candidates). Rows top to bottom."""
    size = 2 * grid
    heat = [[0.0] * size for _ in range(size)]
    for c in candidates:
        x1, y1, x2, y2 = (round(v * size) for v in c.box)
        for y in range(y1, y2):
            row = heat[y]
            for x in range(x1, x2):
                row[x] += c.score
    top = max(max(row) for row in heat)
    return [[v / top for v in row] for row in heat] if top > 0 else heat
