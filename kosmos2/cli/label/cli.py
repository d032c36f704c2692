"""``python -m kosmos2 label DIR --phrase ... --task detect|ground|caption --format coco|yolo|jsonl --out PATH``.

Everything the user gives is checked before anything is written or loaded (one ``error:`` line and exit
status 2); then the images not yet in the journal are labelled (one process, or Ray with ``--engine ray``),
each record appended to the journal as it finishes, and the COCO or YOLO files written from the journal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from ...demo.loading import MAX_BATCH_SIZE, TINY_CHECKPOINT, ModelHolder, progress
from ...demo.signals import SignalGuard, StopRequested, stop_on_signals
from ...demo.tasks import TASKS
from ...errors import UserError
from ...hub import CheckpointError
from .. import common
from . import records
from .outputs import Outputs
from .ray_engine import import_ray
from .records import FORMATS, JournalWriter, Record
from .work import LABEL_TASKS, Labeller, Plan, label_files

ENGINES = ("local", "ray")


_EXTENSIONS = ", ".join(e.lstrip(".") for e in records.IMAGE_EXTENSIONS)  # for messages


def parser() -> argparse.ArgumentParser:
    """The ``label`` subcommand's arguments; the setting flags come from the settings specs."""
    p = common.OneLineParser(
        prog=f"{common.program()} label",
        description="Label every image of a folder with KOSMOS-2 (COCO, YOLO or JSONL); rerun the same "
        "command to resume an interrupted run.",
    )
    p.add_argument("folder", type=Path, help=f"folder of images ({_EXTENSIONS})")
    common.add_phrase_flag(p, "a phrase to find (repeatable; one category each, in this order); for detect and ground")
    p.add_argument(
        "--task",
        choices=LABEL_TASKS,
        default="detect",
        help="detect: every instance of each phrase, scored; ground: one box per phrase; caption: a "
        "grounded caption and its phrases' boxes (default detect)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="coco",
        help="coco: one JSON file; yolo: a folder of labels/*.txt, classes.txt and data.yaml; jsonl: "
        "the journal itself (default coco)",
    )
    p.add_argument("--out", type=Path, required=True, help="the COCO or JSONL file, or the YOLO folder")
    p.add_argument(
        "--journal",
        type=Path,
        help="the JSONL journal (default: --out for jsonl, OUT with .jsonl for coco, OUT/labels.jsonl for yolo)",
    )
    p.add_argument("--recursive", action="store_true", help="also label the images in sub-folders")
    common.add_model_flags(p)
    common.add_settings_groups(p, "generation settings (ground, caption)", "detection settings (detect)")
    ray = p.add_argument_group("engine")
    ray.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process; ray: a Ray Data pipeline (pip install -r requirements-ray.txt)",
    )
    ray.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    ray.add_argument("--workers", type=int, default=1, help="Ray actors, each with its own model (default 1)")
    ray.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per Ray actor (default 1)")
    ray.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs per Ray actor (default 0)")
    return p


# --------------------------------------------------------------------------- checking the command


@dataclass
class Job:
    """A checked command: what to label, how, and where the results go."""

    folder: Path
    files: list[str]  # every image of the folder, sorted
    plan: Plan
    outputs: Outputs
    holder: ModelHolder
    args: argparse.Namespace
    journal: records.Journal = field(default_factory=records.Journal)  # as read by prepare()
    pending: list[str] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        """The run's parameters: a rerun resumes the journal only with the same ones."""
        return {
            "folder": str(self.folder),
            "recursive": self.args.recursive,
            **self.plan.params(),
            "checkpoint": self.holder.checkpoint,
            "dtype": self.dtype or "default",
            "quantize": self.holder.quantize,
        }

    @property
    def dtype(self) -> str | None:
        """The dtype asked for (``--dtype`` or ``$KOSMOS2_DTYPE``); None: the default of the model's device."""
        return self.args.dtype or os.environ.get("KOSMOS2_DTYPE") or None


def prepare(args: argparse.Namespace) -> Job:
    """Check the command (nothing is written or loaded); a :class:`~kosmos2.errors.UserError` says what is
    wrong."""
    folder = args.folder.resolve()
    if not folder.is_dir():
        raise common.UsageError(f"{args.folder} is not a folder")
    plan = Plan.make(args.task, args.phrases, common.setting_flags(args, TASKS[args.task]))
    files = records.find_images(folder, args.recursive)
    if not files:
        raise common.UsageError(
            f"no images ({_EXTENSIONS}) in {args.folder}"
            + ("" if args.recursive else " (--recursive looks in sub-folders too)")
        )
    if args.format == "yolo" and (pairs := records.yolo_collisions(files)):
        raise common.UsageError(f"{pairs[0][0]} and {pairs[0][1]} would share one YOLO label file; rename one")
    if args.engine == "ray":
        import_ray()
        if args.workers < 1:
            raise common.UsageError(f"--workers must be at least 1, got {args.workers}")
    elif args.address or args.workers != 1:
        raise common.UsageError("--address and --workers apply to --engine ray")
    outputs = Outputs.check(args.format, args.out, args.journal)
    holder = common.model_holder(args, fallback=False)
    job = Job(folder, files, plan, outputs, holder, args)
    records.check_resumable(outputs.journal, job.params())
    job.journal = records.read_journal(outputs.journal)
    job.pending = records.pending_files(files, job.journal)
    return job


# --------------------------------------------------------------------------- running it


@dataclass
class Tally:
    """What this run did, for the summary."""

    skipped: int
    done: int = 0
    boxes: int = 0
    failed: list[Record] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def add(self, record: Record, plan: Plan) -> None:
        if "failed" in record:
            self.failed.append(record)
        else:
            self.done += 1
            self.boxes += len(records.annotations_of(record, plan.task, plan.phrases))

    def summary(self) -> str:
        wall = time.perf_counter() - self.start
        rate = f"{self.done / wall:.2f} images/s" if wall > 0 else "n/a"
        lines = [
            f"done {self.done} images, skipped {self.skipped} (already in the journal), failed "
            f"{len(self.failed)}; {self.boxes} boxes; {wall:.1f} s wall time, {rate}"
        ]
        lines += [f"  failed: {r['file']}: {r['failed']}" for r in self.failed]
        return "\n".join(lines)


def _engine(job: Job) -> Callable[[list[str]], Records]:
    """The engine's labelling function (pending files -> records as they finish); for the local engine the
    model is loaded here, before the journal is opened."""
    args = job.args
    if job.holder.checkpoint == TINY_CHECKPOINT:  # (never an offline fallback: the holder has none)
        progress("warning: tiny checkpoint with random weights: the labels are random")
    if args.engine == "ray":
        from .ray_engine import Cluster, ModelSpec, label_with_ray

        model = ModelSpec(job.holder.checkpoint, job.dtype, job.holder.quantize)
        cluster = Cluster(args.address, args.workers, args.worker_cpus, args.worker_gpus)
        return lambda pending: label_with_ray(job.plan, model, job.folder, pending, cluster, MAX_BATCH_SIZE)
    try:
        loaded = job.holder.get()
    except CheckpointError as e:
        raise CheckpointError(
            f"{e}; label never falls back to random weights (--tiny labels with the tiny "
            "random checkpoint, --checkpoint DIR with a local copy)"
        ) from e
    labeller = Labeller(loaded, job.plan)
    return lambda pending: label_files(labeller, job.folder, pending)


class Records(Protocol):
    """What an engine gives: the records as they finish; :meth:`stop` ends the run early (the images in
    progress finish and still come)."""

    def __iter__(self) -> Iterator[Record]: ...

    def __next__(self) -> Record: ...

    def stop(self) -> None: ...


def _journal(stream: Records, writer: JournalWriter, tally: Tally, bar: tqdm, plan: Plan, guard: SignalGuard) -> None:
    for record in stream:
        with guard.deferred():  # a record in the journal is in the summary
            writer.append(record)
            tally.add(record, plan)
            bar.update(1)
            bar.set_postfix(boxes=tally.boxes, failed=len(tally.failed), refresh=False)


def run(job: Job) -> int:
    """Label the job's pending images, then write its outputs; the exit status: 0, or after SIGINT (Ctrl-C)
    130 and after SIGTERM 143 (128 + the signal's number, as a shell reports a process the signal ended).
    Either signal finishes the images in progress, writes their records and prints the summary; a second
    one quits at once (every record written so far is on disk)."""
    try:
        with stop_on_signals() as guard:
            return _run(job, guard)
    except StopRequested as stop:  # while loading the model or writing the outputs: nothing half-written
        progress(f"stopped ({stop}); {_resume_hint(job)}")
        return stop.exit_status
    finally:
        job.holder.close()


def _resume_hint(job: Job) -> str:
    return f"rerun the same command to resume ({job.outputs.journal} keeps what is done)"


def _run(job: Job, guard: SignalGuard) -> int:
    label = _engine(job) if job.pending else None
    job.outputs.prepare()
    with JournalWriter(job.outputs.journal, job.params(), known=job.journal) as writer:
        pending = records.pending_files(job.files, writer.journal)
        wanted = set(job.files)
        earlier = [r for r in writer.journal.failed if r["file"] in wanted]
        if writer.journal.dropped_partial_line:
            progress(f"dropped a partial last line of {job.outputs.journal} (an interrupted write): redoing it")
        tally = Tally(skipped=len(job.files) - len(pending))
        bar = tqdm(total=len(pending), unit="image", file=sys.stderr, dynamic_ncols=True, disable=None)
        stream = label(pending) if label and pending else None
        try:
            if stream is not None:
                _journal(stream, writer, tally, bar, job.plan, guard)
        except StopRequested as stop:
            bar.clear()
            again = "Ctrl-C" if str(stop) == "SIGINT" else str(stop)
            progress(f"stopped ({stop}): finishing the images in progress ({again} again to quit at once)...")
            try:
                if stream is not None:
                    stream.stop()
                    _journal(stream, writer, tally, bar, job.plan, guard)
            except StopRequested:  # quit now: every record so far is on disk, threads may be inside the model
                progress(f"{tally.summary()}\n[kosmos2] {_resume_hint(job)}")
                job.holder.remove_tiny_files()  # (os._exit skips the atexit clean-up)
                os._exit(stop.exit_status)
            bar.close()
            progress(f"{tally.summary()}\n[kosmos2] {_resume_hint(job)}")
            return stop.exit_status
        bar.close()
    progress(tally.summary())
    if earlier:
        progress(f"{len(earlier)} file(s) failed in an earlier run: the 'failed' lines of {job.outputs.journal}")
    progress(job.outputs.write(job.files, job.plan, job.folder, writer.journal))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m kosmos2 label ...``; returns the exit status (2: a bad command, nothing written)."""
    try:
        job = prepare(parser().parse_args(sys.argv[1:] if argv is None else argv))
        return run(job)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
