"""The ``detect`` task: every instance of each phrase, with scores, from the model's location
distributions (see :mod:`kosmos2.detection`), and re-filtering without the model."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .. import detection, grounding
from ..detection import Candidate
from .loading import LoadedModel
from .mode import Mode
from .request import TaskRequest
from .results import TaskResult, build_result
from .settings import DetectionSettings

_HEAD, _TAIL = "<grounding><phrase> ", "</phrase><object>"  # around the phrase of a detect prompt


def detect_prompt(phrase: str) -> str:
    """The prompt that asks where ``phrase`` is: the model's next two tokens are a box."""
    return f"{_HEAD}{phrase}{_TAIL}"


def detect_phrase(prompt: str) -> str:
    """The phrase of a :func:`detect_prompt`."""
    if not (prompt.startswith(_HEAD) and prompt.endswith(_TAIL)):
        raise ValueError(f"not a detect prompt: {prompt!r}")
    return prompt[len(_HEAD) : -len(_TAIL)]


@dataclass(frozen=True)
class Detection:
    """What a detect run found for one request, kept so that the filters can change without the model:
    the request, its phrases, every candidate box per phrase, and how long the model took."""

    request: TaskRequest
    phrases: tuple[str, ...]
    candidates: tuple[tuple[Candidate, ...], ...]
    seconds: float = 0.0

    def result(self, settings: DetectionSettings, refiltered: bool = False) -> TaskResult:
        """The result under ``settings``: per phrase, its boxes after NMS, the threshold and the cap
        (``refiltered``: filtered again after the first result, which its timing line says)."""
        texts, logprobs = [], []
        for phrase, candidates in zip(self.phrases, self.candidates):
            kept = detection.select(candidates, settings.threshold, settings.max_instances, settings.nms_iou)
            markup = grounding.object_markup([(c.first, c.second) for c in kept]) if kept else ""
            texts.append(f"<grounding><phrase> {phrase}</phrase>{markup}")
            logprobs.append([lp for c in kept for lp in (math.log(c.p_first), math.log(c.p_second))])
        out = build_result(self.request, texts, done=True, patch_logprobs=logprobs)
        out.detection, out.seconds, out.threshold, out.refiltered = self, self.seconds, settings.threshold, refiltered
        return out

    def density(self, phrase: int) -> list[list[float]]:
        """Where the model looks for phrase number ``phrase`` (see :func:`kosmos2.detection.density_map`)."""
        return detection.density_map(self.candidates[phrase])


def detect_many(loaded: LoadedModel, requests: Sequence[TaskRequest], settings: DetectionSettings) -> list[TaskResult]:
    """Run ``detect`` requests (one row per phrase) together: one forward pass over all their prompts,
    one batched step for all candidate first cells. One result per request."""
    from ..serving import locate  # model code loads with the model, not with the app (see ModelHolder._from)

    start = time.perf_counter()
    processor, engine = loaded.processor, loaded.batcher.engine
    rows, phrases = [], []
    for request in requests:
        n = len(request.prompts)
        batch = processor(text=list(request.prompts), images=[request.image] * n, return_tensors="pt", padding=True)
        rows.extend(
            engine.rows(
                batch["pixel_values"], batch["input_ids"], batch["image_embeds_position_mask"], batch["attention_mask"]
            )
        )
        phrases.append(tuple(detect_phrase(p) for p in request.prompts))
    location_ids = torch.tensor(loaded.location_ids)
    located = locate(engine, rows, location_ids, settings.candidates, detection.FIRST_CELL_FLOOR)
    seconds = time.perf_counter() - start
    out, at = [], 0
    for request, names in zip(requests, phrases):
        per_phrase = []
        for row in located[at : at + len(names)]:
            first = row.first.tolist()
            per_phrase.append(
                tuple(
                    c
                    for k, cell in enumerate(row.tried)
                    for c in detection.candidates_from(cell, first[cell], row.second[k].tolist())
                )
            )
        at += len(names)
        out.append(Detection(request, names, tuple(per_phrase), seconds).result(settings))
    return out


def _detect_one(
    loaded: LoadedModel, request: TaskRequest, settings: DetectionSettings, min_interval_s: float, partial: bool
) -> Iterator[TaskResult | None]:
    yield from detect_many(loaded, [request], settings)  # (one step: no partial results)


DETECT = Mode(DetectionSettings, stream=_detect_one, many=detect_many, batches_images=True, refilters=True)
