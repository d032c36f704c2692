"""Labelling images with a loaded model: what one run asks for (:class:`Plan`), decoding files in a
background thread, and a :class:`Labeller` that keeps the model's batcher full.

Both engines (one process, and the Ray actors) run :func:`label_files`.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from ...demo.execute import run_tasks
from ...demo.inputs import InputError, parse_phrases
from ...demo.loading import LoadedModel
from ...demo.mode import Settings
from ...demo.request import TaskRequest
from ...demo.results import TaskResult
from ...demo.tasks import TASKS, Task, build_request
from ..common import UsageError
from .records import Record

T = TypeVar("T")
R = TypeVar("R")


LABEL_TASKS = ("detect", "ground", "caption")  # the tasks that label a folder


@dataclass(frozen=True)
class Plan:
    """What a labelling run does to each image: the task (one of :data:`LABEL_TASKS`), its phrases and its
    settings (the task's group)."""

    task: str
    phrases: tuple[str, ...]
    settings: Settings

    @classmethod
    def make(cls, task: str, phrases: Sequence[str], settings: Settings) -> Plan:
        """The plan, checked: ``caption`` takes no phrases (they come from the captions), the others at
        least one, each one line and none twice (:class:`UsageError`, naming ``--phrase``)."""
        if task == "caption":
            if phrases:
                raise UsageError("--phrase does not apply to --task caption (its phrases come from the captions)")
            return cls(task, (), settings)
        if not phrases:
            raise UsageError(f"--task {task} needs at least one --phrase")
        parsed = parse_phrases("\n".join(phrases))
        if len(parsed) != len(phrases):
            raise UsageError("each --phrase must be one line of text")
        if len(set(parsed)) != len(parsed):
            raise UsageError(f"a phrase is given twice: {next(p for p in parsed if parsed.count(p) > 1)!r}")
        return cls(task, tuple(parsed), settings)

    @property
    def spec(self) -> Task:
        """The task's record in the task table."""
        return TASKS[self.task]

    def request(self, path: Path) -> TaskRequest:
        """The request for the image at ``path`` (decodes it; :class:`InputError` for an unusable file)."""
        return build_request(self.task, path, "\n".join(self.phrases) if self.phrases else None)

    def params(self) -> dict[str, Any]:
        """The plan as JSON-able parameters (kept beside the journal; a resumed run must have the same)."""
        return {"task": self.task, "phrases": list(self.phrases), "settings": asdict(self.settings)}


@dataclass(frozen=True)
class Item:
    """A file after decoding: its request, or why it cannot be labelled."""

    file: str
    request: TaskRequest | None = None
    failed: str | None = None


def decode(folder: Path, file: str, plan: Plan) -> Item:
    """Decode ``folder / file`` into the plan's request; an unusable file is an :class:`Item` with its reason."""
    try:
        return Item(file, request=plan.request(folder / file))
    except InputError as e:
        return Item(file, failed=str(e))


def record_of(file: str, result: TaskResult) -> Record:
    """The journal record of one labelled image."""
    width, height = result.image_size
    entities = [{k: v for k, v in e.items() if k != "colour"} for e in result.entities_json()]
    return {
        "file": file,
        "width": width,
        "height": height,
        "caption": result.caption,
        "entities": entities,
        "timing": {"seconds": round(result.seconds, 3), "new_tokens": result.new_tokens},
    }


class Labeller:
    """Labels decoded items with ``loaded``, sharing the model's batches between images.

    A task whose mode batches images (``detect``) labels :attr:`images_per_call` images per call; the others
    (``ground``, ``caption``) label one image per call, and :attr:`calls_in_flight` calls at once feed the
    batcher, which decodes their rows together. ``one_at_a_time`` labels image after image instead (the
    benchmark's baseline).
    """

    def __init__(self, loaded: LoadedModel, plan: Plan, one_at_a_time: bool = False) -> None:
        self.loaded = loaded
        self.plan = plan
        batch = 1 if one_at_a_time else loaded.batcher.max_batch_size
        batches_images = plan.spec.mode.batches_images
        self.images_per_call = batch if batches_images else 1
        self.calls_in_flight = 1 if batches_images else batch

    def label(self, items: Sequence[Item]) -> list[Record]:
        """The records of ``items`` (failed ones as ``{"file", "failed"}``), in order."""
        ready = {i.file: i.request for i in items if i.request is not None}
        records = self._results(ready)
        return [{"file": i.file, "failed": i.failed} if i.request is None else records[i.file] for i in items]

    def _results(self, ready: Mapping[str, TaskRequest]) -> dict[str, Record]:
        if not ready:
            return {}
        results = run_tasks(self.loaded, self.plan.spec, list(ready.values()), self.plan.settings)
        return {file: record_of(file, r) for file, r in zip(ready, results)}


class Labelling(Iterator[Record]):
    """The records of a run as they finish (see :func:`label_files`); :meth:`stop` ends it early."""

    def __init__(self, labeller: Labeller, folder: Path, files: Iterable[str]) -> None:
        plan = labeller.plan
        in_flight = labeller.calls_in_flight * labeller.images_per_call
        self._decoded = BackgroundMap(lambda f: decode(folder, f, plan), files, workers=1, depth=max(2, in_flight))
        self._labelled = BackgroundMap(
            labeller.label,
            chunks(self._decoded, labeller.images_per_call),
            workers=labeller.calls_in_flight,
            depth=labeller.calls_in_flight,
        )
        self._ready: collections.deque[Record] = collections.deque()

    def __next__(self) -> Record:
        while not self._ready:
            self._ready.extend(next(self._labelled))
        return self._ready.popleft()

    def stop(self) -> None:
        """Decode and label no more files: the calls running finish, and their records still come; then the
        iteration ends."""
        self._decoded.stop()
        self._labelled.stop()


def label_files(labeller: Labeller, folder: Path, files: Iterable[str]) -> Labelling:
    """Decode ``files`` (relative to ``folder``) in a background thread and label them, keeping
    ``labeller.calls_in_flight`` calls running; records come in the order they finish."""
    return Labelling(labeller, folder, files)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_END = object()


class BackgroundMap(Iterator[R]):
    """``fn`` over ``items`` in ``workers`` daemon threads, at most ``depth`` items taken ahead; iterating
    gives the results in the order they finish, and raises an exception of ``fn`` or of ``items``.

    An interrupt (``KeyboardInterrupt`` while waiting in ``next``) leaves it usable: :meth:`stop`, then
    iterate to the end, lets the calls running finish instead of leaving threads in the middle of the model.
    """

    def __init__(self, fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int) -> None:
        self._fn, self._items, self._workers = fn, items, workers
        self._todo: queue.Queue = queue.Queue(maxsize=depth)
        self._done: queue.Queue = queue.Queue()
        self._stopped = threading.Event()
        self._finished = 0
        threads = [threading.Thread(target=self._feed, name="kosmos2-label-feed", daemon=True)]
        threads += [threading.Thread(target=self._work, name="kosmos2-label-work", daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()

    def _feed(self) -> None:
        try:
            for item in self._items:
                if self._stopped.is_set():
                    break
                self._todo.put(item)
        except BaseException as e:  # handed to the consumer, which raises it
            self._done.put((False, e))
        finally:
            for _ in range(self._workers):
                self._todo.put(_END)

    def _work(self) -> None:
        while (item := self._todo.get()) is not _END:
            if self._stopped.is_set():
                continue  # taken ahead but not started: dropped
            try:
                self._done.put((True, self._fn(item)))
            except BaseException as e:  # handed to the consumer, which raises it
                self._done.put((False, e))
        self._done.put(_END)

    def __next__(self) -> R:
        while self._finished < self._workers:
            got = self._done.get()
            if got is _END:
                self._finished += 1
                continue
            ok, value = got
            if not ok:
                raise value
            return value
        raise StopIteration

    def stop(self) -> None:
        """Take no more items; the calls running finish and their results still come."""
        self._stopped.set()
