"""The generation settings a user may change, each defined once.

Each field of :class:`GenerationSettings` carries its :class:`Setting` (label, default, range, help);
the app's sliders, the API's parameters, the CLI's flags and the server-side checks are all derived
from :data:`SETTINGS`, and values travel by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .inputs import InputError

DECODING = ("greedy", "beam", "sample")
MAX_NEW_TOKENS_CAP = 512


@dataclass(frozen=True)
class Setting:
    """One user-facing generation setting (its name is that of its :class:`GenerationSettings` field, which
    is also its API parameter): ``label`` names it to people (UI, error messages); numbers have a range
    and a step, text settings a set of choices."""

    default: Any
    label: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def kind(self) -> type:
        """``int``, ``float`` or ``str``: the type of the default."""
        return type(self.default)

    def parse(self, value: Any) -> Any:
        """``value`` from an untrusted source, checked and converted; :class:`InputError` names the setting."""
        if self.choices:
            if value not in self.choices:
                raise InputError(f"{self.label} must be one of {', '.join(self.choices)}, got {value!r}.")
            return value
        try:
            x = float(value)
        except (TypeError, ValueError) as e:
            raise InputError(f"{self.label} must be a number, got {value!r}.") from e
        if not math.isfinite(x) or not self.minimum <= x <= self.maximum:
            raise InputError(f"{self.label} must be between {self.minimum:g} and {self.maximum:g}, got {value!r}.")
        if self.kind is int:
            if x != int(x):
                raise InputError(f"{self.label} must be a whole number, got {value!r}.")
            return int(x)
        return x


def _setting(default: Any, label: str, **spec: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(default, label, **spec)})


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, validated from untrusted values by :meth:`from_user`."""

    max_new_tokens: int = _setting(128, "Max new tokens", minimum=1, maximum=MAX_NEW_TOKENS_CAP, step=1,
                                   help="how long the answer may get")
    decoding: str = _setting("greedy", "Decoding", choices=DECODING,
                             help="greedy: the likeliest token each step; beam: beam search; sample: random draws")
    num_beams: int = _setting(3, "Number of beams", minimum=1, maximum=8, step=1, help="beam search only")
    temperature: float = _setting(0.7, "Temperature", minimum=0.05, maximum=2.0, step=0.05, help="sampling only")
    top_p: float = _setting(0.9, "Top-p", minimum=0.05, maximum=1.0, step=0.05, help="sampling only")
    no_repeat_ngram_size: int = _setting(0, "No-repeat n-gram size", minimum=0, maximum=10, step=1,
                                         help="never repeat an n-gram of this size; 0 = off")

    @classmethod
    def from_user(cls, **values: Any) -> GenerationSettings:
        """Check each given value's type and range by name (missing ones take their default); raise
        :class:`InputError` naming the first bad one, or an unknown name."""
        unknown = set(values) - set(SETTINGS)
        if unknown:
            raise InputError(f"Unknown setting(s): {', '.join(sorted(unknown))}.")
        return cls(**{name: s.parse(values[name]) for name, s in SETTINGS.items() if name in values})

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


SETTINGS: Mapping[str, Setting] = {f.name: f.metadata["setting"] for f in fields(GenerationSettings)}
