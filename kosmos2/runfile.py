"""A long run's parameters, kept beside what it writes so that a rerun resumes only the same run (``label``'s
journal, ``train``'s output folder): reading them and saying what changed. Pure Python."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError


class RunFileError(UserError, ValueError):
    """A parameters file that cannot be read."""


def read_run(path: Path, advice: str) -> dict[str, Any]:
    """The parameters in ``path``; :class:`RunFileError` (ending with ``advice``) when it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path} is not JSON ({e.msg}); {advice}") from e
    if not isinstance(data, dict):
        raise RunFileError(f"{path} is not a JSON object; {advice}")
    return data


def changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """What differs between two runs' parameters, e.g. ``"steps: 1 then, 2 now"`` (empty when nothing does)."""
    differ = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    return "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in differ)
