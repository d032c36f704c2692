"""``python -m kosmos2 selfcheck``: this implementation on the real checkpoint, against recorded outputs.

The recorded outputs (``kosmos2/expectations/snowman.json``, a copy of the project's shared facts) come
from two public sources about ``microsoft/kosmos-2-patch14-224`` on its own ``snowman.png``:

- the ``transformers`` integration test (``tests/models/kosmos2/test_modeling_kosmos2.py``,
  ``Kosmos2ModelIntegrationTest``): the PNG saved as JPEG with PIL's defaults and reopened; float32,
  greedy, 128 new tokens; exact ids, processed texts, entities and two 3×3 slices of ``generate``'s
  scores (``torch.concat(scores[1:4])[:3, :3]`` and ``torch.concat(scores[-3:])[-3:, -3:]``) for the
  brief and the detailed grounded caption, and a left-padded batch of both prompts;
- the model card's task examples (the PNG used directly).

The check runs every recorded prompt greedily in float32 and compares: ids, texts and entities exactly,
score slices within ``--atol`` (default 1e-4). It then runs the same in bfloat16 and (on a CPU) with the
int8 text decoder, and reports how they agree with float32 (tokens identical; IoU of matched entities'
boxes). Exit status: 0 when float32 matches everything, 1 when it does not, 2 when the check cannot run
(hub unreachable without ``--checkpoint``/``--image``, bad arguments or files).

The comparison is pure (``cases_from``, ``compare_case``, ``agreement``, ``box_iou``: plain values, no
model); running the model is ``run_mode``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import detection
from .common import OneLineParser, UsageError, program
from ..hub import MODEL_FILES, PROCESSOR_FILES, CheckpointError, HubUnreachable, resolve_checkpoint
from ..image_processing import ImageError, open_image

MAX_NEW_TOKENS = 128  # the recorded runs' setting
ATOL = 1e-4
SCORE_SLICES = ("scores_1_4_first3x3", "scores_last3_last3x3")
TEXT_FIELDS = ("processed_text", "caption")
COMPARED_FIELDS = ("ids", *TEXT_FIELDS, "entities", *SCORE_SLICES)
INTEGRATION, MODEL_CARD = "integration test", "model card"

JsonEntity = list  # [phrase, [start, end], [[x1, y1, x2, y2], ...]], as the expectations file stores it


def default_expectations() -> Path:
    """The packaged expectations file (``kosmos2/expectations/snowman.json``)."""
    return Path(str(resources.files("kosmos2").joinpath("expectations", "snowman.json")))


class HubUnavailable(Exception):
    """The Hugging Face hub cannot be reached and nothing usable is cached: exit status 2."""


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
                singles.append(Case(entry["name"], INTEGRATION, True, (entry["prompt"],),
                                    (_recorded_fields(entry, where),)))
        cases = singles + [_batch_case(e, singles, w) for e, w in batches]
        cases += [Case(entry["task"], MODEL_CARD, False, (entry["prompt"],),
                       (_recorded_fields(entry, f"model_card[{i}]"),))
                  for i, entry in enumerate(data.get("model_card", []))]
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
        raise UsageError(f"unknown case {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"the cases are: {', '.join(sorted(known))}")
    return [c for c in cases if c.name in wanted]


# --------------------------------------------------------------------------------------------------
# Comparing a produced record with the recorded one (pure)


@dataclass(frozen=True)
class Produced:
    """What one prompt produced: the row's ids (padding included), its new ids (after the prompt, without
    the padding after EOS), the processed text (tags kept), the caption, the entities in the expectations
    file's JSON form, and the score slices (unbatched runs only)."""

    ids: list[int]
    new_ids: list[int]
    processed_text: str
    caption: str
    entities: list[JsonEntity]
    scores: dict[str, list[list[float]]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The fields as :func:`compare` reads them."""
        return {"ids": self.ids, "processed_text": self.processed_text, "caption": self.caption,
                "entities": self.entities, **self.scores}


def json_entities(entities: Sequence[tuple[str, tuple[int, int], Sequence[Sequence[float]]]]) -> list[JsonEntity]:
    """Entities ``(phrase, (start, end), [boxes])`` as JSON lists, the expectations file's form."""
    return [[phrase, [int(s) for s in span], [[float(v) for v in box] for box in boxes]]
            for phrase, span, boxes in entities]


def _compare_ids(expected: Sequence[int], got: Sequence[int], prompt_length: int | None) -> list[str]:
    where = first_difference(expected, got)
    if where is None:
        return []
    new = f" (new token {where - prompt_length + 1})" if prompt_length is not None and where >= prompt_length else ""
    want = expected[where] if where < len(expected) else "the end"
    have = got[where] if where < len(got) else "the end"
    return [f"ids differ at position {where}{new}: expected {want}, got {have} "
            f"(lengths {len(expected)} and {len(got)})"]


def _compare_text(name: str, expected: str, got: str) -> list[str]:
    where = first_difference(expected, got)
    if where is None:
        return []
    lo = max(0, where - 20)
    return [f"{name} differs at character {where}: "
            f"expected …{expected[lo:where + 30]!r}…, got …{got[lo:where + 30]!r}…"]


def _compare_entities(expected: Sequence[JsonEntity], got: Sequence[JsonEntity]) -> list[str]:
    problems = []
    for i, (want, have) in enumerate(zip(expected, got), start=1):
        want, have = json.loads(json.dumps(want)), json.loads(json.dumps(have))  # tuples -> lists
        if want[0] != have[0]:
            problems.append(f"entity {i}: phrase expected {want[0]!r}, got {have[0]!r}")
        if want[1] != have[1]:
            problems.append(f"entity {i} ({want[0]!r}): span expected {tuple(want[1])}, got {tuple(have[1])}")
        if want[2] != have[2]:
            problems.append(f"entity {i} ({want[0]!r}): boxes expected {want[2]}, got {have[2]}")
    if len(expected) != len(got):
        extra = [e[0] for e in (got[len(expected):] or expected[len(got):])]
        problems.append(f"entities: expected {len(expected)}, got {len(got)} "
                        f"({'extra' if len(got) > len(expected) else 'missing'}: {', '.join(map(repr, extra))})")
    return problems


def _compare_scores(name: str, expected: Sequence[Sequence[float]], got: Sequence[Sequence[float]] | None,
                    atol: float) -> list[str]:
    if got is None:
        return [f"{name}: no scores were produced"]
    want, have = torch.tensor(expected, dtype=torch.float64), torch.tensor(got, dtype=torch.float64)
    if want.shape != have.shape:
        return [f"{name}: shape expected {tuple(want.shape)}, got {tuple(have.shape)}"]
    diff = (want - have).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not worst <= atol:  # also catches NaN
        r, c = divmod(int(diff.argmax()), want.shape[1])
        return [f"{name}: max |difference| {worst:.2e} > {atol:g} at [{r}][{c}] "
                f"(expected {float(want[r, c]):.6f}, got {float(have[r, c]):.6f})"]
    return []


def compare(expected: Mapping[str, Any], produced: Mapping[str, Any], atol: float = ATOL,
            prompt_length: int | None = None) -> list[str]:
    """The mismatches of one produced record against the recorded fields (only fields that were recorded
    are compared): ids, texts and entities exactly, score slices within ``atol``. ``prompt_length``
    lets an id mismatch say which new token it is."""
    problems: list[str] = []
    for key, want in expected.items():
        if key == "ids":
            problems += _compare_ids(want, produced["ids"], prompt_length)
        elif key in TEXT_FIELDS:
            problems += _compare_text(key, want, produced[key])
        elif key == "entities":
            problems += _compare_entities(want, produced["entities"])
        elif key in SCORE_SLICES:
            problems += _compare_scores(key, want, produced.get(key), atol)
        else:
            raise ValueError(f"unknown recorded field {key!r}")
    return problems


def compare_case(case: Case, rows: Sequence[Produced], atol: float = ATOL) -> list[str]:
    """The mismatches of a case's produced rows (prefixed with the row for a batch)."""
    if len(rows) != len(case.expected):
        return [f"{len(rows)} rows produced for {len(case.expected)} prompts"]
    problems = []
    for i, (want, row) in enumerate(zip(case.expected, rows), start=1):
        prefix = f"row {i}: " if case.batched else ""
        prompt_length = len(row.ids) - len(row.new_ids) if not case.batched else None
        problems += [prefix + p for p in compare(want, row.record(), atol, prompt_length)]
    return problems


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """The first index where ``a`` and ``b`` differ (the shorter one's length if one is a prefix of the
    other), or None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``(x1, y1, x2, y2)``; 1.0 for two identical empty boxes."""
    return 1.0 if list(a) == list(b) else detection.iou(a, b)


def match_entities(reference: Sequence[JsonEntity], other: Sequence[JsonEntity]) -> list[tuple[JsonEntity, JsonEntity]]:
    """Pairs of entities with the same phrase, in order (each entity used once)."""
    pairs, used = [], set()
    for ref in reference:
        j = next((j for j, o in enumerate(other) if j not in used and o[0] == ref[0]), None)
        if j is not None:
            used.add(j)
            pairs.append((ref, other[j]))
    return pairs


def entity_iou(a: JsonEntity, b: JsonEntity) -> float:
    """Mean IoU of two entities' boxes, paired in order; a box without a partner counts 0."""
    boxes = max(len(a[2]), len(b[2]))
    if boxes == 0:
        return 1.0
    return sum(box_iou(x, y) for x, y in zip(a[2], b[2])) / boxes


@dataclass(frozen=True)
class Agreement:
    """How a mode's rows agree with float32's: the first differing new token (row, index) or None, and the
    IoU of each matched entity (same phrase), out of float32's entity count."""

    first_difference: tuple[int, int] | None
    ious: tuple[float, ...]
    entities: int

    def text(self, batched: bool) -> str:
        """A table cell: ``tokens identical; IoU 1.00 (2/2)``."""
        if self.first_difference is None:
            tokens = "tokens identical"
        else:
            row, index = self.first_difference
            tokens = f"tokens differ from new token {index + 1}" + (f" of row {row + 1}" if batched else "")
        if not self.entities:
            return f"{tokens}; no entities"
        iou = f"IoU {sum(self.ious) / len(self.ious):.2f}" if self.ious else "IoU -"
        return f"{tokens}; {iou} ({len(self.ious)}/{self.entities} matched)"


def agreement(reference: Sequence[Produced], other: Sequence[Produced]) -> Agreement:
    """Agreement of ``other``'s rows with ``reference``'s (float32's)."""
    first = None
    for row, (ref, oth) in enumerate(zip(reference, other)):
        where = first_difference(ref.new_ids, oth.new_ids)
        if where is not None:
            first = (row, where)
            break
    ious = [entity_iou(a, b) for ref, oth in zip(reference, other) for a, b in match_entities(ref.entities, oth.entities)]
    return Agreement(first, tuple(ious), sum(len(r.entities) for r in reference))


# --------------------------------------------------------------------------------------------------
# Running the model


@dataclass(frozen=True)
class Mode:
    """A way to load the weights: a dtype and optionally the int8 text decoder."""

    name: str
    dtype: torch.dtype
    quantize: str | None = None


MODES = {
    "float32": Mode("float32", torch.float32),
    "bfloat16": Mode("bfloat16", torch.bfloat16),
    "int8": Mode("int8", torch.float32, "int8"),  # float32 with the int8 text decoder, as KOSMOS2_QUANTIZE=int8
}


def jpeg_round_trip(image: Image.Image) -> Image.Image:
    """The integration test's preparation: ``image.save("new_image.jpg")`` with PIL's defaults, reopened."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    buffer.seek(0)
    reopened = Image.open(buffer)
    reopened.load()
    return reopened


def score_slices(scores: Sequence[torch.Tensor]) -> dict[str, list[list[float]]]:
    """The integration test's two slices: ``concat(scores[1:4])[:3, :3]`` and ``concat(scores[-3:])[-3:, -3:]``."""
    first = torch.cat(list(scores[1:4]))[:3, :3] if len(scores) > 1 else torch.empty(0, 0)
    last = torch.cat(list(scores[-3:]))[-3:, -3:]
    return {SCORE_SLICES[0]: first.float().cpu().tolist(), SCORE_SLICES[1]: last.float().cpu().tolist()}


def generate_rows(model: torch.nn.Module, processor: Any, case: Case, image: Image.Image,
                  max_new_tokens: int = MAX_NEW_TOKENS, with_scores: bool = True) -> list[Produced]:
    """Run one case greedily as the recorded runs did; with ``with_scores``, the score slices for an
    unbatched case that recorded them (``generate``'s processed scores, as the reference test reads them)."""
    text = list(case.prompts) if case.batched else case.prompts[0]
    images = [image] * len(case.prompts) if case.batched else image
    inputs = processor(text=text, images=images, return_tensors="pt", padding=True, padding_side="left")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    want_scores = with_scores and not case.batched and any(k in SCORE_SLICES for k in case.expected[0])
    args = dict(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"], image_embeds=None,
                image_embeds_position_mask=inputs["image_embeds_position_mask"], use_cache=True,
                max_new_tokens=max_new_tokens)
    out = model.generate(**args, output_scores=want_scores, return_dict_in_generate=True)
    sequences, scores = out.sequences, (list(out.scores) if want_scores else None)
    return _rows(processor, sequences.cpu(), inputs["input_ids"].shape[1], scores, model.generation_config.pad_token_id)


def _rows(processor: Any, sequences: torch.Tensor, prompt_width: int, scores: list[torch.Tensor] | None,
          pad_id: int) -> list[Produced]:
    rows = []
    for seq, text in zip(sequences.tolist(), processor.batch_decode(sequences, skip_special_tokens=True)):
        new = seq[prompt_width:]
        while new and new[-1] == pad_id:  # rows that ended early are filled with padding
            new.pop()
        caption, entities = processor.post_process_generation(text)
        rows.append(Produced(seq, new, processor.post_process_generation(text, cleanup_and_extract=False), caption,
                             json_entities(entities), score_slices(scores) if scores is not None else {}))
    return rows


@dataclass(frozen=True)
class ModeRun:
    """One mode's rows per case, and how long loading and generating took."""

    mode: Mode
    rows: list[list[Produced]]
    load_seconds: float
    run_seconds: float

    def timing(self) -> str:
        """``float32: loaded in 4.7 s; 1234 new tokens in 312 s (3.96 tokens/s, prompts and images included)``."""
        tokens = sum(len(r.new_ids) for rows in self.rows for r in rows)
        rate = f"{tokens / self.run_seconds:.3g}" if self.run_seconds > 0 else "-"
        return (f"{self.mode.name}: loaded in {self.load_seconds:.1f} s; {tokens} new tokens in "
                f"{self.run_seconds:.1f} s ({rate} tokens/s, prompts and images included)")


def run_mode(folder: Path, mode: Mode, device: str, cases: Sequence[Case], images: Mapping[bool, Image.Image],
             processor: Any, log: Callable[[str], None]) -> ModeRun:
    """Load the checkpoint in ``mode`` and run every case (the score slices in float32 only, the mode that
    is compared with the record); the model is freed afterwards."""
    from ..model import Kosmos2ForConditionalGeneration

    log(f"{mode.name}: loading {folder}")
    start = time.perf_counter()
    model = Kosmos2ForConditionalGeneration.from_pretrained(folder, dtype=mode.dtype, device=device,
                                                            quantize=mode.quantize)
    loaded = time.perf_counter()
    try:
        rows = []
        for i, case in enumerate(cases, start=1):
            log(f"{mode.name}: {case.name} ({i}/{len(cases)})")
            rows.append(generate_rows(model, processor, case, images[case.jpeg], with_scores=mode.name == "float32"))
        return ModeRun(mode, rows, loaded - start, time.perf_counter() - loaded)
    finally:
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Getting the checkpoint and the image


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Hide huggingface_hub's retry warnings while it tries an unreachable hub (the outcome is reported
    once, by the caller); its progress bars stay."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _hub_unavailable(what: str) -> HubUnavailable:
    return HubUnavailable(
        f"selfcheck needs the Hugging Face hub for {what}, and it cannot be reached (offline, or HF_HUB_OFFLINE=1) "
        "with no copy in the local cache: run it where the hub is reachable, or pass --checkpoint FOLDER and --image FILE"
    )


def fetch_image(path: str | None, repo: str, filename: str) -> Image.Image:
    """``path`` opened, or ``filename`` downloaded from the model repository ``repo``."""
    if path is None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

        try:
            with _quiet_hub():
                path = hf_hub_download(repo, filename)
        except LocalEntryNotFoundError as e:
            raise _hub_unavailable(f"{filename} of {repo}") from e
        except (EntryNotFoundError, RepositoryNotFoundError) as e:
            raise UsageError(f"cannot get {filename} from {repo}: {e}") from e
    return open_image(path)


def fetch_checkpoint(checkpoint: str) -> Path:
    """A local folder with the checkpoint's model and processor files (downloaded if it is a hub id)."""
    try:
        with _quiet_hub():
            return resolve_checkpoint(checkpoint, (*MODEL_FILES, *PROCESSOR_FILES))
    except HubUnreachable as e:
        raise _hub_unavailable(checkpoint) from e


# --------------------------------------------------------------------------------------------------
# The report


def max_score_difference(case: Case, rows: Sequence[Produced]) -> float | None:
    """The largest |recorded - produced| over a case's score slices (None when none were recorded or
    their shapes differ)."""
    worst = None
    for want, row in zip(case.expected, rows):
        for key in SCORE_SLICES:
            if key in want and key in row.scores:
                a = torch.tensor(want[key], dtype=torch.float64)
                b = torch.tensor(row.scores[key], dtype=torch.float64)
                if a.shape != b.shape or not a.numel():
                    return None
                worst = max(worst or 0.0, float((a - b).abs().max()))
    return worst


def _cell(case: Case, rows: Sequence[Produced], problems: list[str]) -> str:
    if problems:
        return f"MISMATCH ({len(problems)})"
    worst = max_score_difference(case, rows)
    return "match" + (f" (scores within {worst:.1e})" if worst is not None else "")


def report(cases: Sequence[Case], results: Mapping[str, list[list[Produced]]],
           problems: Sequence[list[str]]) -> str:
    """The table (one row per case: float32 against the record, each other mode against float32), a
    summary line and every mismatch."""
    others = [m for m in results if m != "float32"]
    head = ["case", "source", "image", "float32 vs recorded", *(f"{m} vs float32" for m in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (case, found) in enumerate(zip(cases, problems)):
        ref = results["float32"][i]
        cells = [case.name + (f" (batch of {len(case.prompts)})" if case.batched else ""), case.source,
                 "JPEG round trip" if case.jpeg else "PNG", _cell(case, ref, found)]
        cells += [agreement(ref, results[m][i]).text(case.batched) for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [c for c, p in zip(cases, problems) if p]
    lines.append("")
    lines.append(f"float32: {len(cases) - len(failed)}/{len(cases)} cases match the recorded outputs exactly"
                 + ("." if not failed else f"; mismatches in: {', '.join(c.name for c in failed)}"))
    for case, found in zip(cases, problems):
        lines += [f"  {case.name}: {p}" for p in found]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The command


def parser() -> argparse.ArgumentParser:
    """The ``selfcheck`` arguments."""
    p = OneLineParser(prog=f"{program()} selfcheck",
                description="Check this implementation on the real checkpoint against its recorded outputs "
                            "on snowman.png (transformers integration test and model card).")
    p.add_argument("--checkpoint", help="checkpoint folder or hub id (default: the expectations' checkpoint, "
                                        "microsoft/kosmos-2-patch14-224)")
    p.add_argument("--image", help="the snowman image file (default: snowman.png from the model repository)")
    p.add_argument("--expectations", default=None,
                   help="recorded outputs, JSON (default: the packaged kosmos2/expectations/snowman.json)")
    p.add_argument("--modes", default=None,
                   help="comma-separated, float32 first: float32,bfloat16,int8 (default; int8 only on a CPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--atol", type=float, default=ATOL, help=f"tolerance of the score slices (default {ATOL:g})")
    return p


def parse_modes(text: str | None, device: str) -> list[Mode]:
    """The modes to run: float32 first (the others are compared with it); int8 only on a CPU."""
    if text is None:
        names = ["float32", "bfloat16", "int8"] if device == "cpu" else ["float32", "bfloat16"]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown:
        raise UsageError(f"unknown mode {', '.join(map(repr, unknown))}; choose from {', '.join(MODES)}")
    if not names or names[0] != "float32" or len(set(names)) != len(names):
        raise UsageError("--modes must start with float32 and name each mode once")
    if "int8" in names and device != "cpu":
        raise UsageError("the int8 mode runs on a CPU only (--device cpu)")
    return [MODES[n] for n in names]


def _device(text: str | None) -> str:
    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {text!r}")
    if text == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return text


def hub_sources(data: Mapping[str, Any]) -> tuple[str, str, str]:
    """The expectations' checkpoint id, and the repository and file name of their image."""
    try:
        return str(data["checkpoint"]), str(data["image"]["repo"]), str(data["image"]["repo_file"])
    except (KeyError, TypeError) as e:
        raise UsageError(f"malformed expectations file: missing or wrong field {e} (checkpoint, image)") from e


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when float32 matches every recorded output, 1 when not, 2 when it cannot run."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser().parse_args(argv)
        if not args.atol >= 0:
            raise UsageError(f"--atol must be >= 0, got {args.atol}")
        device = _device(args.device)
        modes = parse_modes(args.modes, device)
        data = load_expectations(args.expectations or default_expectations())
        cases = select_cases(cases_from(data), args.cases)
        checkpoint, image_repo, image_file = hub_sources(data)
        png = fetch_image(args.image, image_repo, image_file)
        folder = fetch_checkpoint(args.checkpoint or checkpoint)
        from ..processing import Kosmos2Processor

        processor = Kosmos2Processor.from_pretrained(folder)
    except HubUnavailable as e:
        print(_one_line(e), file=sys.stderr)
        return 2
    except (UsageError, ImageError, CheckpointError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    images = {False: png, True: jpeg_round_trip(png)}
    runs = [run_mode(folder, m, device, cases, images, processor, log) for m in modes]
    results = {run.mode.name: run.rows for run in runs}
    problems = [compare_case(c, rows, args.atol) for c, rows in zip(cases, results["float32"])]
    print(f"selfcheck: {args.checkpoint or checkpoint} on {args.image or image_file}, "
          f"{len(cases)} cases, greedy, {MAX_NEW_TOKENS} new tokens, on {device} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(report(cases, results, problems))
    print("")
    print("\n".join(run.timing() for run in runs))
    if "int8" in results:
        print("int8: float32 with the experimental int8 text decoder and LM head (KOSMOS2_QUANTIZE=int8)")
    return 1 if any(problems) else 0


if __name__ == "__main__":
    sys.exit(main())
