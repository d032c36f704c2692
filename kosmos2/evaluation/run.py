"""Running the protocols on a loaded model, through the task runner the app and the CLI use: comprehension and
grounding with KOSMOS-2's decoding (greedy, ``no_repeat_ngram_size=3``), detection with ``detect``'s scored boxes
and pycocotools, captions with the ``caption`` task."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..demo.execute import run_tasks
from ..demo.inputs import MAX_PHRASES
from ..demo.loading import LoadedModel
from ..demo.request import TaskRequest
from ..demo.results import TaskResult
from ..demo.settings import DetectionSettings, GenerationSettings
from ..demo.tasks import TASKS, build_request
from ..errors import UserError
from .data import Benchmark, Captioned, Query
from .metrics import found_at, match_entities, phrase_boxes

PROTOCOLS = ("comprehension", "grounding", "detection", "caption")
RANKS = (1, 5, 10)
LOCATE = GenerationSettings(max_new_tokens=40, decoding="greedy", no_repeat_ngram_size=3)  # the paper's decoding
CAPTION = GenerationSettings(max_new_tokens=80, decoding="greedy", no_repeat_ngram_size=3)
DETECT = DetectionSettings(threshold=0.01, max_instances=10)  # low: COCO's AP ranks every box by its score


class EvalError(UserError, RuntimeError):
    """An evaluation that cannot run (pycocotools missing, nothing to evaluate)."""


@dataclass
class Score:
    """One protocol's result on one model: its metrics (name -> value in [0, 1]), how many items, the seconds."""

    protocol: str
    metrics: dict[str, float]
    count: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_per_item(self) -> float:
        """Wall-clock milliseconds per item (model time included, loading not)."""
        return 1000 * self.seconds / max(self.count, 1)


def _by_image(items: Iterable[Any]) -> dict[Path, list[Any]]:
    groups: dict[Path, list[Any]] = {}
    for item in items:
        groups.setdefault(item.image, []).append(item)
    return groups


def _rows(image: Path, prompts: Sequence[str]) -> TaskRequest:
    """A request of one batch row per prompt on ``image`` (read and checked as the app reads it)."""
    return replace(build_request("caption", image), prompts=tuple(prompts), colour_by_row=True)


def _row_entities(result: TaskResult, row: int, scored: bool = False) -> list[tuple[str, list[Any]]]:
    """The phrases of batch row ``row`` with their pixel boxes (generation order, or best score first)."""
    out = []
    for e in result.entities:
        if e.row != row:
            continue
        boxes = list(e.pixel_boxes)
        if scored:
            order = sorted(range(len(boxes)), key=lambda i: -(e.scores[i] or 0.0) if i < len(e.scores) else 0.0)
            boxes = [boxes[i] for i in order]
        out.append((e.phrase, boxes))
    return out


def locate(loaded: LoadedModel, queries: Sequence[Query], tick: Callable[[int], None]) -> list[tuple[list, list]]:
    """For each query, its phrase's generated boxes in generation order and by score (one request per image, a
    batch row per query)."""
    found: dict[int, tuple[list, list]] = {}
    index = {id(q): i for i, q in enumerate(queries)}
    for image, group in _by_image(queries).items():
        (result,) = run_tasks(loaded, TASKS["ground"], [_rows(image, [q.prompt for q in group])], LOCATE)
        for row, q in enumerate(group):
            found[index[id(q)]] = (
                phrase_boxes(_row_entities(result, row), q.phrase),
                phrase_boxes(_row_entities(result, row, scored=True), q.phrase),
            )
        tick(len(group))
    return [found[i] for i in range(len(queries))]


def comprehension(loaded: LoadedModel, queries: Sequence[Query], tick: Callable[[int], None]) -> Score:
    """Referring expression comprehension: Acc@0.5 of the first box of the expression's phrase."""
    start = time.perf_counter()
    boxes = locate(loaded, queries, tick)
    hits = sum(found_at(ranked, q.truth, 1) for q, (ranked, _) in zip(queries, boxes))
    return Score("comprehension", {"acc@0.5": hits / len(queries)}, len(queries), time.perf_counter() - start)


def grounding(loaded: LoadedModel, queries: Sequence[Query], tick: Callable[[int], None]) -> Score:
    """Phrase grounding: R@1, R@5 and R@10 over the boxes in generation order (any true box counts), and R@1 of
    the best-scored box."""
    start = time.perf_counter()
    boxes = locate(loaded, queries, tick)
    metrics = {
        f"R@{k}": sum(found_at(r, q.truth, k) for q, (r, _) in zip(queries, boxes)) / len(queries) for k in RANKS
    }
    metrics["R@1 by score"] = sum(found_at(s, q.truth, 1) for q, (_, s) in zip(queries, boxes)) / len(queries)
    return Score("grounding", metrics, len(queries), time.perf_counter() - start)


def caption(loaded: LoadedModel, captions: Sequence[Captioned], tick: Callable[[int], None]) -> Score:
    """Caption grounding: the share of true entity boxes that the brief grounded caption finds (same phrase,
    IoU 0.5), and the mean IoU of those found."""
    start = time.perf_counter()
    found = total = 0
    ious: list[float] = []
    for c in captions:
        (result,) = run_tasks(loaded, TASKS["caption"], [build_request("caption", c.image)], CAPTION)
        f, t, i = match_entities([(e.phrase, e.pixel_boxes) for e in result.entities], c.entities)
        found, total, ious = found + f, total + t, ious + i
        tick(1)
    metrics = {"entity recall": found / max(total, 1), "mean IoU": sum(ious) / max(len(ious), 1)}
    return Score("caption", metrics, len(captions), time.perf_counter() - start)


def detection(loaded: LoadedModel, bench: Benchmark, tick: Callable[[int], None]) -> Score:
    """COCO mAP (IoU 0.5:0.95) and AP50 of ``detect``'s scored boxes for every category on every image, by
    pycocotools."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise EvalError("detection is scored by pycocotools: pip install pycocotools") from e
    start = time.perf_counter()
    ids = {name: cid for cid, name in bench.categories.items()}
    names = list(bench.categories.values())
    texts = ["\n".join(names[k : k + MAX_PHRASES]) for k in range(0, len(names), MAX_PHRASES)]  # a request's most
    detections = []
    for item in bench.coco_images:
        requests = [build_request("detect", item.image, text=text) for text in texts]
        entities = [e for result in run_tasks(loaded, TASKS["detect"], requests, DETECT) for e in result.entities]
        for entity in entities:
            for (x1, y1, x2, y2), s in zip(entity.pixel_boxes, entity.scores):
                detections.append({"image_id": item.id, "category_id": ids[entity.phrase.strip()],
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s or 0.0)})  # fmt: skip
        tick(1)
    seconds = time.perf_counter() - start
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        truth = COCO(str(bench.source))
        if not detections:
            return Score("detection", {"mAP": 0.0, "AP50": 0.0}, len(bench.coco_images), seconds)
        scored = COCOeval(truth, truth.loadRes(detections), "bbox")
        scored.params.imgIds = [item.id for item in bench.coco_images]
        scored.evaluate()
        scored.accumulate()
        scored.summarize()
    metrics = {"mAP": max(float(scored.stats[0]), 0.0), "AP50": max(float(scored.stats[1]), 0.0)}
    return Score("detection", metrics, len(bench.coco_images), seconds)


def evaluate(
    loaded: LoadedModel, bench: Benchmark, protocols: Sequence[str], tick: Callable[[int], None] = lambda n: None
) -> list[Score]:
    """The scores of ``bench`` for each of ``protocols`` that it has items for."""
    scores = []
    if "comprehension" in protocols and bench.comprehension:
        scores.append(comprehension(loaded, bench.comprehension, tick))
    if "grounding" in protocols and bench.grounding:
        scores.append(grounding(loaded, bench.grounding, tick))
    if "detection" in protocols and bench.coco_images:
        scores.append(detection(loaded, bench, tick))
    if "caption" in protocols and bench.captions:
        scores.append(caption(loaded, bench.captions, tick))
    return scores


def items(bench: Benchmark, protocols: Sequence[str]) -> int:
    """How many items ``evaluate`` runs for ``protocols`` (for a progress bar)."""
    sizes = {"comprehension": len(bench.comprehension), "grounding": len(bench.grounding),
             "detection": len(bench.coco_images), "caption": len(bench.captions)}  # fmt: skip
    return sum(sizes[p] for p in protocols)
