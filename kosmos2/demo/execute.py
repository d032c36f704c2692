"""Running any task of the table: generation (streamed) or detection, with the task's own settings."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .detect import detect_many
from .loading import LoadedModel
from .results import TaskResult, run, run_to_end
from .settings import DetectionSettings, GenerationSettings
from .tasks import Task, TaskRequest


def task_settings(task: Task, values: Mapping[str, Any]) -> GenerationSettings | DetectionSettings:
    """``values`` (by name, from an untrusted source) checked as the task's settings group."""
    return task.settings.from_user(**values)


def execute(loaded: LoadedModel, task: Task, request: TaskRequest, settings: GenerationSettings | DetectionSettings,
            min_interval_s: float = 0.05) -> Iterator[TaskResult]:
    """Partial results while a generating task runs (at most every ``min_interval_s``), the final one last;
    a detect task yields its final result only."""
    if task.detect:
        yield from detect_many(loaded, [request], settings)
    else:
        yield from run(loaded, request, settings, min_interval_s)


def execute_to_end(loaded: LoadedModel, task: Task, request: TaskRequest,
                   settings: GenerationSettings | DetectionSettings) -> TaskResult:
    """The final result of :func:`execute`."""
    return detect_many(loaded, [request], settings)[0] if task.detect else run_to_end(loaded, request, settings)
