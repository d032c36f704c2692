"""How a task runs: the :class:`Mode` each record of the task table carries (generating text, or detecting
every instance), so that nothing else branches on the kind of task."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .loading import LoadedModel
from .request import TaskRequest
from .results import TaskResult
from .settings import DetectionSettings, GenerationSettings

Settings = GenerationSettings | DetectionSettings


@dataclass(frozen=True)
class Mode:
    """How the tasks of one kind run.

    ``settings`` is the settings group they take; ``stream(loaded, request, settings, min_interval_s,
    partial)`` yields partial results (at most every ``min_interval_s``; None in their place without
    ``partial``) and the final one last; ``many(loaded,
    requests, settings)`` gives the final results of several requests. ``batches_images``: ``many`` runs
    several images' requests in one call (``label`` hands it a batch of images), else one image per call
    and several calls at once feed the batcher. ``refilters``: a result keeps what the filters need to
    change it without the model (the page shows the filters and a heat map beside it).
    """

    settings: type[GenerationSettings] | type[DetectionSettings]
    stream: Callable[[LoadedModel, TaskRequest, Any, float, bool], Iterator[TaskResult | None]]
    many: Callable[[LoadedModel, Sequence[TaskRequest], Any], list[TaskResult]]
    batches_images: bool = False
    refilters: bool = False
