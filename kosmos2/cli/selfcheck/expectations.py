"""What selfcheck runs and what it expects (pure): the recorded cases of the expectations file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..common import UsageError

MAX_NEW_TOKENS = 128  # the recorded runs' setting
ATOL = 1e-4
SCORE_SLICES = ("scores_1_4_first3x3", "scores_last3_last3x3")
TEXT_FIELDS = ("processed_text", "caption")
COMPARED_FIELDS = ("ids", *TEXT_FIELDS, "entities", *SCORE_SLICES)
INTEGRATION, MODEL_CARD = "integration test", "model card"

JsonEntity = list  # [phrase, [start, end], [[x1, y1, x2, y2], ...]], as the expectations file stores it


def default_expectations() -> Path:
    """The packaged expectations file (``kosmos2/expectations/snowman.json``)."""
    return Path(str(resources.files("kosmos2") / "expectations" / "snowman.json"))


# --------------------------------------------------------------------------------------------------
# What to run and what to expect (pure)


@dataclass(frozen=True)
class Case:
    """One recorded run: its prompts (several = one left-padded batch) and, per prompt, the recorded fields
    (a subset of :data:`COMPARED_FIELDS`). ``jpeg``: the integration test's JPEG round trip of the image."""

    name: str
    source: str
    jpeg: bool
    prompts: tuple[str, ...]
    expected: tuple[dict[str, Any], ...]

    @property
    def batched(self) -> bool:
        return len(self.prompts) > 1


def load_expectations(path: str | Path) -> dict[str, Any]:
    """The parsed expectations file; ``UsageError`` if it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UsageError(f"expectations file not found: {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read the expectations file {path}: {e}") from e


def _recorded_fields(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The comparable fields of one recorded entry (``expected_ids`` becomes ``ids``)."""
    fields = {"ids": entry["expected_ids"]} if "expected_ids" in entry else {}
    fields.update({k: entry[k] for k in COMPARED_FIELDS if k in entry and k != "ids"})
    if not fields:
        raise UsageError(f"{where} records nothing to compare (none of expected_ids, {', '.join(COMPARED_FIELDS[1:])})")
    return fields


def _batch_case(entry: Mapping[str, Any], singles: Sequence[Case], where: str) -> Case:
    """A batch entry. Its rows are compared with ``expected_rows`` when the entry records them (one entry
    per prompt, the fields of an unbatched entry); otherwise (the real record: "left padding gives the
    same processed texts and entities") with what the unbatched runs of the same prompts recorded (texts
    and entities; the ids differ by the padding)."""
    if entry.get("padding_side", "left") != "left":
        raise UsageError(f"{where}: only left padding is supported (generation needs it)")
    if "expected_rows" in entry:
        if len(entry["expected_rows"]) != len(entry["prompts"]):
            raise UsageError(f"{where}: expected_rows must have one entry per prompt")
        rows = [_recorded_fields(r, f"{where}.expected_rows[{i}]") for i, r in enumerate(entry["expected_rows"])]
        return Case(entry["name"], INTEGRATION, True, tuple(entry["prompts"]), tuple(rows))
    rows = []
    for prompt in entry["prompts"]:
        single = next((c for c in singles if c.prompts == (prompt,)), None)
        if single is None:
            raise UsageError(f"{where}: no unbatched entry records the prompt {prompt!r}")
        rows.append({k: v for k, v in single.expected[0].items() if k in (*TEXT_FIELDS, "entities")})
    return Case(entry["name"], INTEGRATION, True, tuple(entry["prompts"]), tuple(rows))


def cases_from(data: Mapping[str, Any]) -> list[Case]:
    """The cases of an expectations file: the integration test's entries (JPEG round trip), then the model
    card's (the PNG as it is). ``UsageError`` names a malformed entry."""
    try:
        singles: list[Case] = []
        batches = []
        for i, entry in enumerate(data["integration_test"]):
            where = f"integration_test[{i}]"
            if "prompts" in entry:
                batches.append((entry, where))
            else:
                singles.append(
                    Case(entry["name"], INTEGRATION, True, (entry["prompt"],), (_recorded_fields(entry, where),))
                )
        cases = singles + [_batch_case(e, singles, w) for e, w in batches]
        cases += [
            Case(entry["task"], MODEL_CARD, False, (entry["prompt"],), (_recorded_fields(entry, f"model_card[{i}]"),))
            for i, entry in enumerate(data.get("model_card", []))
        ]
    except (KeyError, TypeError) as e:
        raise UsageError(f"malformed expectations file: missing or wrong field {e}") from e
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise UsageError(f"case names must be unique, got {names}")
    return cases


def select_cases(cases: list[Case], names: str | None) -> list[Case]:
    """The cases named in a comma-separated list (all when ``names`` is None)."""
    if names is None:
        return cases
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {c.name for c in cases}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise UsageError(
            f"unknown case {', '.join(map(repr, unknown)) or '(none given)'}; the cases are: {', '.join(sorted(known))}"
        )
    return [c for c in cases if c.name in wanted]


def hub_sources(data: Mapping[str, Any]) -> tuple[str, str, str]:
    """The expectations' checkpoint id, and the repository and file name of their image."""
    try:
        return str(data["checkpoint"]), str(data["image"]["repo"]), str(data["image"]["repo_file"])
    except (KeyError, TypeError) as e:
        raise UsageError(f"malformed expectations file: missing or wrong field {e} (checkpoint, image)") from e
