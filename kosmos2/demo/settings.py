"""The generation settings a user may change, each defined once.

Each field of :class:`GenerationSettings` carries its :class:`Setting` (label, default, range, help);
the app's sliders, the API's parameters, the CLI's flags and the server-side checks are all derived
from :data:`SETTINGS`, and values travel by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .inputs import InputError

DECODING = ("greedy", "beam", "sample")
MAX_NEW_TOKENS_CAP = 512
MAX_CANDIDATES = 32  # top-left cells tried per phrase by detect


@dataclass(frozen=True)
class Setting:
    """One user-facing generation setting (its name is that of its :class:`GenerationSettings` field, which
    is also its API parameter): ``label`` names it to people (UI, error messages); numbers have a range
    and a step, text settings a set of choices."""

    default: Any
    label: str
    minimum: float = -math.inf  # a number's range (the bounds allowed); a text setting has choices instead
    maximum: float = math.inf
    step: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    def describe(self) -> str:
        """Its help, range and default in one line (CLI help, API parameter docs)."""
        allowed = f"{self.minimum:g} to {self.maximum:g}" if not self.choices else ", ".join(self.choices)
        return "; ".join(p for p in (self.help, allowed, f"default {self.default}") if p)

    @property
    def kind(self) -> type:
        """``int``, ``float`` or ``str``: the type of the default."""
        return type(self.default)

    def parse(self, value: Any, name: str | None = None) -> Any:
        """``value`` from an untrusted source, checked and converted; :class:`InputError` names the setting
        (``name``: what the user calls it there, such as a command-line flag; default its label)."""
        name = name or self.label
        if self.choices:
            if value not in self.choices:
                raise InputError(f"{name} must be one of {', '.join(self.choices)}, got {value!r}.")
            return value
        try:
            x = float(value)
        except (TypeError, ValueError) as e:
            raise InputError(f"{name} must be a number, got {value!r}.") from e
        if not math.isfinite(x) or not self.minimum <= x <= self.maximum:
            raise InputError(f"{name} must be between {self.minimum:g} and {self.maximum:g}, got {value!r}.")
        if self.kind is int:
            if x != int(x):
                raise InputError(f"{name} must be a whole number, got {value!r}.")
            return int(x)
        return x


def _setting(default: Any, label: str, **spec: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(default, label, **spec)})


def _number(default: float, label: str, minimum: float, maximum: float, step: float, help: str) -> Any:
    return _setting(default, label, minimum=minimum, maximum=maximum, step=step, help=help)


class _UserSettings:
    """``from_user`` for a frozen dataclass whose fields carry a :class:`Setting` each."""

    @classmethod
    def spec(cls) -> Mapping[str, Setting]:
        """The :class:`Setting` of each field, by name."""
        return {f.name: f.metadata["setting"] for f in fields(cls)}  # type: ignore[arg-type]  # the subclasses are dataclasses

    @classmethod
    def from_user(cls, called: Callable[[str], str] | None = None, **values: Any) -> Any:
        """Check each given value's type and range by name (missing ones take their default); raise
        :class:`InputError` naming the first bad one (by its label, or ``called(name)``: a command-line
        flag), or an unknown name."""
        spec = cls.spec()
        unknown = set(values) - set(spec)
        if unknown:
            raise InputError(f"Unknown setting(s): {', '.join(sorted(unknown))}.")
        return cls(
            **{
                name: s.parse(values[name], called(name) if called else None)
                for name, s in spec.items()
                if name in values
            }
        )


@dataclass(frozen=True)
class GenerationSettings(_UserSettings):
    """Decoding settings, validated from untrusted values by :meth:`from_user`."""

    max_new_tokens: int = _number(128, "Max new tokens", 1, MAX_NEW_TOKENS_CAP, 1, "how long the answer may get")
    decoding: str = _setting(
        "greedy",
        "Decoding",
        choices=DECODING,
        help="greedy: the likeliest token each step; beam: beam search; sample: random draws",
    )
    num_beams: int = _number(3, "Number of beams", 1, 8, 1, "beam search only")
    temperature: float = _number(0.7, "Temperature", 0.05, 2.0, 0.05, "sampling only")
    top_p: float = _number(0.9, "Top-p", 0.05, 1.0, 0.05, "sampling only")
    no_repeat_ngram_size: int = _number(
        0, "No-repeat n-gram size", 0, 10, 1, "never repeat an n-gram of this size; 0 = off"
    )

    @property
    def streams(self) -> bool:
        """Beam search returns only at the end; the other modes stream token by token."""
        return self.decoding != "beam"

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": 1, "do_sample": False}
        if self.decoding == "beam":
            kwargs["num_beams"] = self.num_beams
        elif self.decoding == "sample":
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs


@dataclass(frozen=True)
class DetectionSettings(_UserSettings):
    """How ``detect`` turns the model's location distributions into boxes (see ``kosmos2.detection``)."""

    threshold: float = _number(
        0.1, "Box threshold", 0.0, 1.0, 0.01, "keep boxes scoring at least this (the model's probability of the box)"
    )
    max_instances: int = _number(
        10, "Max boxes per phrase", 1, MAX_CANDIDATES, 1, "at most this many boxes per phrase, the best first"
    )
    nms_iou: float = _number(
        0.5, "Overlap limit (NMS IoU)", 0.0, 1.0, 0.05, "drop a box overlapping a better one by more than this IoU"
    )
    candidates: int = _number(
        16, "Candidate cells", 1, MAX_CANDIDATES, 1, "top-left cells tried per phrase (the likeliest ones)"
    )


SETTINGS: Mapping[str, Setting] = GenerationSettings.spec()
DETECTION_SETTINGS: Mapping[str, Setting] = DetectionSettings.spec()
