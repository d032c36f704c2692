"""The one way to run a task of the table, for the app, the CLI, ``label`` and the benchmarks: the task's
:class:`~kosmos2.demo.mode.Mode` decides how (generation, streamed, or detection)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .loading import LoadedModel
from .mode import Settings
from .request import TaskRequest
from .results import TaskResult
from .tasks import Task


def task_settings(task: Task, values: Mapping[str, Any]) -> Settings:
    """``values`` (by name, from an untrusted source) checked as the task's settings group."""
    return task.settings.from_user(**values)


def run_task(
    loaded: LoadedModel,
    task: Task,
    request: TaskRequest,
    settings: Settings,
    min_interval_s: float = math.inf,
    partial: bool = True,
) -> Iterator[TaskResult | None]:
    """Run ``task`` on a validated ``request`` (see :func:`~kosmos2.demo.tasks.build_request`) with the
    task's ``settings``: partial results while it runs (at most every ``min_interval_s``; none by
    default), the final one last. Without ``partial`` a None stands for each partial result (nothing is
    built: the caller only wants to keep control while it waits). Closing the iterator early stops the
    request's work."""
    return task.mode.stream(loaded, request, settings, min_interval_s, partial)


def run_tasks(loaded: LoadedModel, task: Task, requests: Sequence[TaskRequest], settings: Settings) -> list[TaskResult]:
    """The final result of each of ``requests`` for ``task`` (detection runs them in one batch)."""
    return task.mode.many(loaded, requests, settings)
