"""The Ray Data engine of ``python -m kosmos2 label --engine ray``: the image paths as a dataset,
``map_batches`` over a pool of actors that each hold one model, the records streamed back to the driver,
which writes the journal as in one process. Ray is imported only here (``requirements-ray.txt``).

Each actor decodes its batch's files itself (the folder must be readable at the same path on every
node) and labels them with :func:`.work.label_files`, so several images share each decode
step inside an actor too.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kosmos2

from ...errors import UserError
from .work import Plan

RAY_MISSING = "--engine ray needs Ray: pip install -r requirements-ray.txt"


class RayMissingError(UserError, ImportError):
    """Ray (with Ray Data) is not installed."""


@dataclass(frozen=True)
class ModelSpec:
    """How each actor loads its model (the arguments of :class:`kosmos2.demo.loading.ModelHolder`): the
    checkpoint as the driver resolved it (``"tiny"`` for the tiny one), the dtype asked for (None: the
    default of the actor's device) and the int8 mode."""

    checkpoint: str
    dtype: str | None
    quantize: str | None


@dataclass(frozen=True)
class Cluster:
    """Where and how wide to run: ``address`` of a running cluster (None: start a local instance) and the
    actor pool's size and resources per actor."""

    address: str | None = None
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


class LabelActor:
    """One model per actor; labels a batch of file names (``{"file": [...]}``) into JSON records."""

    def __init__(self, plan: Plan, model: ModelSpec, folder: str) -> None:
        from ...demo.loading import ModelHolder
        from .work import Labeller

        holder = ModelHolder(model.checkpoint, dtype=model.dtype, quantize=model.quantize, fallback=False)
        self.labeller = Labeller(holder.get(), plan)
        holder.remove_tiny_files()  # the actor is killed at the end of the run, before any atexit clean-up
        self.folder = Path(folder)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from .work import label_files

        records = label_files(self.labeller, self.folder, [str(f) for f in batch["file"]])
        return {"record": [json.dumps(r, ensure_ascii=False) for r in records]}


def import_ray() -> Any:
    """The ``ray`` module; :class:`RayMissingError` (:data:`RAY_MISSING`) when it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data comes with the "data" extra)
    except ImportError as e:
        raise RayMissingError(RAY_MISSING) from e
    return ray


class RayLabelling(Iterator[dict[str, Any]]):
    """The records of a Ray run as they come back; :meth:`stop` ends the run (and the local Ray instance)."""

    def __init__(self, records: Generator[dict[str, Any], None, None]) -> None:
        self._records = records

    def __next__(self) -> dict[str, Any]:
        return next(self._records)

    def stop(self) -> None:
        """Stop the pipeline: what the actors are doing is dropped (it is not in the journal: redone on resume)."""
        self._records.close()


def label_with_ray(
    plan: Plan, model: ModelSpec, folder: Path, files: Sequence[str], cluster: Cluster, images_per_batch: int
) -> RayLabelling:
    """Label ``files`` (relative to ``folder``) on Ray; records in the order they come back. Starts a local
    Ray instance when ``cluster.address`` is None, else connects to that cluster (and disconnects at the end);
    the ``kosmos2`` package is shipped to the workers."""
    return RayLabelling(_records(import_ray(), plan, model, folder, files, cluster, images_per_batch))


def _records(
    ray: Any, plan: Plan, model: ModelSpec, folder: Path, files: Sequence[str], cluster: Cluster, images_per_batch: int
) -> Generator[dict[str, Any], None, None]:
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines would drown the driver's bar
    # Two warnings about what this module chose: the progress bars are off (the driver shows its own bar),
    # and a local instance has token authentication (Ray's default, kept).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(
        address=cluster.address,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={
            "py_modules": [str(Path(kosmos2.__file__).parent)],
            "env_vars": {"MKL_CBWR": os.environ["MKL_CBWR"]},
        },
    )  # the driver's (see kosmos2)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        batches = max(1, -(-len(files) // images_per_batch))
        data = ray.data.from_items([{"file": f} for f in files], override_num_blocks=batches)
        # max_restarts=0: a failed actor ends the run with its error (Ray's default restarts it forever, and
        # logs an error line for every actor: that its constructor arguments may be gone by then). Ray 2.60
        # takes it only through the deprecated extra keyword arguments, hence the filter.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            labelled = data.map_batches(
                LabelActor,
                fn_constructor_args=(plan, model, str(folder)),
                batch_size=images_per_batch,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(cluster.workers, batches)),
                num_cpus=cluster.cpus_per_worker,
                num_gpus=cluster.gpus_per_worker,
                max_restarts=0,
            )
        for row in labelled.iter_rows():
            yield json.loads(row["record"])
    finally:
        ray.shutdown()
