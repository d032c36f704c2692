"""What the commands share: one-line usage errors, the model flags, the setting flags named after their
settings, the phrase flag, and refusing a flag that does not apply."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from ..demo.inputs import InputError
from ..demo.loading import DTYPES, ModelHolder
from ..demo.settings import DETECTION_SETTINGS, SETTINGS, Setting
from ..demo.tasks import Task
from ..errors import UserError
from ..precision import INT8_MODES


class UsageError(UserError, ValueError):
    """A bad command line (or a file it names); the message is one line for the user: an ``error:`` line,
    exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are a :class:`UsageError` with argparse's message and where to look,
    instead of its usage block and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def program() -> str:
    """How the user ran this command line: ``kosmos2`` (the console script) or ``python -m kosmos2``."""
    return "kosmos2" if os.path.basename(sys.argv[0]) == "kosmos2" else "python -m kosmos2"


def flag(name: str) -> str:
    """The command-line flag of a setting: ``max_new_tokens`` -> ``--max-new-tokens``."""
    return "--" + name.replace("_", "-")


def add_setting_flags(group: argparse._ArgumentGroup, spec: Mapping[str, Setting]) -> None:
    """One typed flag per setting of ``spec`` (values are checked by the settings group's from_user)."""
    for name, s in spec.items():
        group.add_argument(
            flag(name), dest=name, type=str if s.choices else s.kind, choices=s.choices or None, help=s.describe()
        )


def add_settings_groups(p: argparse.ArgumentParser, generation: str, detection: str) -> None:
    """The generation and the detection setting flags, each in a group with its title; read back by
    :func:`setting_flags`."""
    add_setting_flags(p.add_argument_group(generation), SETTINGS)
    add_setting_flags(p.add_argument_group(detection), DETECTION_SETTINGS)


def add_model_flags(p: argparse.ArgumentParser, precision: bool = True) -> None:
    """``--checkpoint``, ``--tiny`` and (with ``precision``) ``--dtype`` and ``--quantize``: which model, loaded
    how."""
    p.add_argument("--checkpoint", help="checkpoint folder or hub id (default: $KOSMOS2_CHECKPOINT or the hub model)")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random checkpoint")
    if precision:
        p.add_argument("--dtype", choices=DTYPES, help="default: $KOSMOS2_DTYPE, else bfloat16 on CUDA, float32 on CPU")
        p.add_argument("--quantize", choices=INT8_MODES, help="the experimental int8 text decoder (CPU)")


def add_phrase_flag(p: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--phrase`` (``--phrases`` too), one phrase each."""
    p.add_argument("--phrase", "--phrases", dest="phrases", action="append", default=[], metavar="PHRASE", help=help)


def model_holder(
    args: argparse.Namespace, fallback: bool = True, dtype: str | None = None, quantize: str | None = None
) -> ModelHolder:
    """The model the flags of :func:`add_model_flags` ask for (checked, not loaded); ``dtype`` and ``quantize``
    stand for the flags where the command has none of its own."""
    if args.tiny and args.checkpoint:
        raise UsageError("give --tiny or --checkpoint, not both")
    dtype = getattr(args, "dtype", None) if dtype is None else dtype
    quantize = getattr(args, "quantize", None) if quantize is None else quantize
    return ModelHolder(args.checkpoint, dtype=dtype, force_tiny=args.tiny, quantize=quantize, fallback=fallback)


def refuse(flags: Sequence[str], task: Task) -> None:
    """:class:`UsageError` when any of ``flags`` (those given that do not apply to ``task``) is there."""
    if flags:
        raise UsageError(f"{', '.join(flags)} does not apply to --task {task.name}")


def setting_flags(args: argparse.Namespace, task: Task) -> Any:
    """The task's settings from the setting flags given (those of :func:`add_setting_flags`), checked;
    :class:`UsageError` naming the flags that are not settings of ``task`` or a value out of its range."""
    given = {name: getattr(args, name) for name in (*SETTINGS, *DETECTION_SETTINGS) if getattr(args, name) is not None}
    refuse([flag(name) for name in given if name not in task.settings.spec()], task)
    try:
        return task.settings.from_user(called=flag, **given)
    except InputError as e:
        raise UsageError(str(e).rstrip(".")) from e
