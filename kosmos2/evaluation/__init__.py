"""Accuracy: KOSMOS-2's evaluation protocols (referring expression comprehension, phrase grounding, detection,
caption grounding) on the files users have; ``python -m kosmos2 eval`` runs them."""

from .data import FORMATS, Benchmark, Captioned, CocoImage, Query, read_benchmark
from .metrics import found_at, match_entities, phrase_boxes
from .run import PROTOCOLS, EvalError, Score, evaluate, items

__all__ = [
    "FORMATS",
    "PROTOCOLS",
    "Benchmark",
    "Captioned",
    "CocoImage",
    "EvalError",
    "Query",
    "Score",
    "evaluate",
    "found_at",
    "items",
    "match_entities",
    "phrase_boxes",
    "read_benchmark",
]
