"""Training examples from the files users have: pure Python (no torch), each example checked where it is read.

An :class:`Example` is an image, the prompt the model is given and the answer it should write after it, in
the model's own text (``<phrase>`` tags and ``<object>`` patch tokens). Four formats are read:

- ``journal``: a ``label`` journal. A ``caption`` run gives one example per image, its caption with each
  phrase's boxes; a ``detect`` or ``ground`` run one per image and phrase, the phrase's boxes in order.
- ``coco``: a COCO detection file; one example per image and category, its boxes in the file's order
  (crowd boxes left out).
- ``refexp``: JSON lines ``{"image", "expression", "box"}``, the box ``[x1, y1, x2, y2]`` in pixels.
- ``grounded``: JSON lines ``{"image", "text", "bboxes"?, "prompt"?}``: ``text`` with ``<phrase>`` tags,
  ``bboxes`` one entry per phrase in the processor's ``bboxes=`` form (normalised floats), ``prompt`` the
  start of ``text`` given to the model, its phrases with their boxes (by default, everything before the
  first ``<phrase>``).

A record that cannot be used (a missing image, a box outside its image, missing fields) becomes a
:class:`Problem` naming its file and line, never an example.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from .. import grounding
from ..errors import UserError
from ..runfile import read_run

FORMATS = ("journal", "coco", "refexp", "grounded")
T = TypeVar("T")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_PIXEL_SLACK = 0.5  # a pixel box may reach half a pixel past the edge (rounded coordinates)


class DataError(UserError, ValueError):
    """A data file that cannot be read at all: missing, not JSON, or of no known format."""


@dataclass(frozen=True)
class Example:
    """One training example: ``image`` (a path), ``prompt`` and ``answer`` (model text), and ``where`` it
    came from (``file:line``)."""

    image: Path
    prompt: str
    answer: str
    where: str

    @property
    def text(self) -> str:
        """The whole text the model learns: the prompt, then the answer."""
        return self.prompt + self.answer


@dataclass(frozen=True)
class Problem:
    """A record left out, and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


Reader = Iterator[tuple[str, Callable[[Path], list[Example]]]]  # (where, the examples of its record)


class RecordError(UserError):
    """A record's problem, raised while reading it (it becomes a :class:`Problem`)."""


def phrase_prompt(phrase: str) -> str:
    """The phrase-grounding prompt (the app's ``ground`` task): the model answers with the phrase's boxes."""
    return f"<grounding><phrase> {phrase.strip()}</phrase>"


def split_prompt(text: str) -> tuple[str, str]:
    """``text`` cut before its first ``<phrase>`` (all of it the answer when it has none)."""
    cut = text.find("<phrase>")
    return (text[:cut], text[cut:]) if cut > 0 else ("", text)


def detect_format(path: Path) -> str:
    """The format of a data file, from its first record (:class:`DataError` when none fits)."""
    first = first_record(path)
    keys = set(first) if isinstance(first, dict) else set()
    if {"images", "annotations", "categories"} <= keys:
        return "coco"
    if {"file", "entities"} <= keys or {"file", "failed"} <= keys:
        return "journal"
    if {"image", "expression", "box"} <= keys:
        return "refexp"
    if {"image", "text"} <= keys:
        return "grounded"
    raise DataError(
        f"{path}: not a known data format (a label journal, a COCO file, refexp or grounded JSON lines; "
        f"its first record has the keys {sorted(keys)})"
    )


def read_examples(path: Path, images: Path, fmt: str = "auto") -> tuple[list[Example], list[Problem]]:
    """The examples of data file ``path`` (format ``fmt`` or detected), image paths taken relative to
    ``images``, and the records left out."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    readers: dict[str, Callable[[Path], Reader]] = {
        "journal": _journal,
        "coco": _coco,
        "refexp": partial(json_lines, make=_refexp_examples),
        "grounded": partial(json_lines, make=_grounded_examples),
    }
    examples: list[Example] = []
    problems: list[Problem] = []
    collect(readers[fmt](path), images, examples, problems)
    return examples, problems


def collect(
    reader: Iterator[tuple[str, Callable[[Path], list[T]]]], images: Path, into: list[T], problems: list[Problem]
) -> None:
    """Each record's items (``make(images)``) into ``into``; a record that cannot be used into ``problems``."""
    for where, make in reader:
        try:
            into.extend(make(images))
        except RecordError as e:
            problems.append(Problem(where, str(e)))


# --------------------------------------------------------------------------- files


def first_record(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                return json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from e
    raise DataError(f"{path} is empty")


def json_lines(path: Path, make: Callable[..., T]) -> Iterator[tuple[str, Callable[[Path], T]]]:
    """For each non-blank line of a JSON-lines file: where it is, and ``make(record, images, where=where)`` (or the
    reason it is not a record)."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield where, partial(_refuse, f"not JSON ({e.msg})")
            continue
        if isinstance(record, dict):
            yield where, partial(make, record, where=where)
        else:
            yield where, partial(_refuse, "not a JSON object")


def _refuse(reason: str, images: Path) -> Any:
    raise RecordError(reason)


def image_file(images: Path, name: object) -> Path:
    if not isinstance(name, str) or not name:
        raise RecordError("no image file named")
    path = images / name
    if not path.is_file():
        raise RecordError(f"no such image: {path}")
    return path


def displayed_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as shown (EXIF orientation applied), read from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            transposed = image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED
    except (OSError, Image.DecompressionBombError) as e:
        raise RecordError(f"cannot read image {path}: {e}") from e
    return (height, width) if transposed else (width, height)


def normalised(box: object, width: float, height: float) -> grounding.Box:
    """A pixel box ``[x1, y1, x2, y2]`` of a ``width`` x ``height`` image as a normalised box, checked."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise RecordError(f"a box must be 4 numbers [x1, y1, x2, y2] in pixels, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise RecordError(f"box {list(box)} is empty or inverted")
    if x1 < -_PIXEL_SLACK or y1 < -_PIXEL_SLACK or x2 > width + _PIXEL_SLACK or y2 > height + _PIXEL_SLACK:
        raise RecordError(f"box {list(box)} lies outside the {width:g}x{height:g} image")
    inside = (
        min(max(x1 / width, 0.0), 1.0),
        min(max(y1 / height, 0.0), 1.0),
        min(max(x2 / width, 0.0), 1.0),
        min(max(y2 / height, 0.0), 1.0),
    )
    if not (inside[2] > inside[0] and inside[3] > inside[1]):
        raise RecordError(f"box {list(box)} has no area inside the {width:g}x{height:g} image")
    return inside


def _normalised_boxes(boxes: object) -> list[grounding.Box]:
    """Boxes already normalised (a journal's), checked."""
    if not isinstance(boxes, list) or not boxes:
        raise RecordError("an entity needs a non-empty list of boxes")
    try:
        return [grounding.validate_box(tuple(float(v) for v in b)) for b in boxes]
    except (TypeError, ValueError) as e:
        raise RecordError(str(e)) from e


# --------------------------------------------------------------------------- the formats


def _journal(path: Path) -> Reader:
    run = path.with_name(path.name + ".run.json")
    if not run.is_file():
        raise DataError(f"{path} is read as a label journal, but {run.name} (its run's parameters) is not beside it")
    params = read_run(run, "it is written by label beside its journal")
    task, phrases = params.get("task"), params.get("phrases") or []
    if task not in ("caption", "ground", "detect"):
        raise DataError(f"{run}: a journal of task {task!r}; train reads caption, ground and detect journals")
    yield from json_lines(path, partial(_journal_examples, task=task, phrases=phrases))


def _journal_examples(
    record: dict[str, Any], images: Path, where: str, task: str, phrases: Sequence[str]
) -> list[Example]:
    if "failed" in record:
        raise RecordError(f"labelling failed: {record['failed']}")
    image = image_file(images, record.get("file"))
    entities = record.get("entities")
    if not isinstance(entities, list):
        raise RecordError("no entities list")
    if task == "caption":
        return [Example(image, *split_prompt("<grounding>" + _caption_text(record, entities)), where)]
    by_row: dict[int, list[grounding.Box]] = {}
    for e in entities:
        row = e.get("row") if isinstance(e, dict) else None
        if not isinstance(row, int) or not 0 <= row < len(phrases):
            raise RecordError(f"an entity's row {row!r} is not a phrase of the run ({len(phrases)} phrases)")
        by_row.setdefault(row, []).extend(_normalised_boxes(e.get("boxes")))
    return [
        Example(image, phrase_prompt(phrases[row]), grounding.object_markup(boxes), where)
        for row, boxes in sorted(by_row.items())
    ]


def _caption_text(record: dict[str, Any], entities: list[Any]) -> str:
    """The caption with each entity's phrase tagged and its boxes after it, as the model writes it
    (a phrase's leading space goes inside its tag)."""
    caption = record.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise RecordError("no caption")
    spans = []
    for e in entities:
        span = e.get("span") if isinstance(e, dict) else None
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)):
            raise RecordError(f"an entity's span {span!r} is not [start, end]")
        start, end = span
        if not 0 <= start < end <= len(caption):
            raise RecordError(f"span {span} lies outside the caption")
        spans.append((start, end, _normalised_boxes(e.get("boxes"))))
    out, pos = [], 0
    for start, end, boxes in sorted(spans):
        if start < pos:
            raise RecordError(f"spans overlap at {start}")
        if start > pos and caption[start - 1] == " ":
            start -= 1
        out += [caption[pos:start], f"<phrase>{caption[start:end]}</phrase>", grounding.object_markup(boxes)]
        pos = end
    out.append(caption[pos:])
    text = "".join(out)
    return text if text.startswith("<phrase>") else " " + text


def _coco(path: Path) -> Reader:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: im for im in data["images"]}
        names = {c["id"]: c["name"] for c in data["categories"]}
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a COCO detection file ({e})") from e
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for a in annotations:
        if not a.get("iscrowd"):
            groups.setdefault((a.get("image_id"), a.get("category_id")), []).append(a)
    for (image_id, category_id), group in groups.items():
        where = f"{path}: annotation {group[0].get('id')}"
        yield where, partial(_coco_examples, images.get(image_id), names.get(category_id), group, where)


def _coco_examples(
    image: dict[str, Any] | None, name: str | None, group: list[dict[str, Any]], where: str, images: Path
) -> list[Example]:
    if image is None or name is None:
        raise RecordError("its image_id or category_id is not in the file")
    path = image_file(images, image.get("file_name"))
    width, height = image.get("width"), image.get("height")
    if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
        raise RecordError(f"image {image.get('id')} has no width and height")
    shown = displayed_size(path)
    if shown != (width, height):
        raise RecordError(
            f"image {image.get('id')} is {width}x{height} in the file but {path} is {shown[0]}x{shown[1]} as shown "
            "(EXIF orientation applied)"
        )
    boxes = []
    for a in group:
        b = a.get("bbox")
        if not (isinstance(b, list) and len(b) == 4):
            raise RecordError(f"annotation {a.get('id')}: bbox must be [x, y, width, height]")
        boxes.append(normalised([b[0], b[1], b[0] + b[2], b[1] + b[3]], width, height))
    return [Example(path, phrase_prompt(name), grounding.object_markup(boxes), where)]


def refexp_record(record: dict[str, Any], images: Path) -> tuple[Path, str, grounding.Box, tuple[int, int]]:
    """A referring-expression record checked: its image, expression, normalised box and the image's size as
    shown."""
    expression = record.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise RecordError("no expression")
    image = image_file(images, record.get("image"))
    size = displayed_size(image)
    return image, expression, normalised(record.get("box"), *size), size


def _refexp_examples(record: dict[str, Any], images: Path, where: str) -> list[Example]:
    image, expression, box, _ = refexp_record(record, images)
    return [Example(image, phrase_prompt(expression), grounding.object_markup([box]), where)]


def _grounded_examples(record: dict[str, Any], images: Path, where: str) -> list[Example]:
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RecordError("no text")
    image = image_file(images, record.get("image"))
    prompt = record.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not text.startswith(prompt)):
        raise RecordError("its prompt is not the start of its text")
    boxes = _as_tuples(record.get("bboxes"))
    try:
        tagged = grounding.insert_object_tags(text, boxes)
        # the prompt's own phrases keep their boxes: the model is given them
        given = prompt and grounding.insert_object_tags(prompt, boxes and boxes[: prompt.count("<phrase>")])
    except ValueError as e:
        raise RecordError(str(e)) from e
    if not given:
        return [Example(image, *split_prompt(tagged), where)]
    return [Example(image, given, tagged[len(given) :], where)]


def _as_tuples(value: Any) -> Any:
    """JSON's lists as the processor's ``bboxes=`` form: a box is a tuple, a phrase's boxes a list."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise RecordError("bboxes must be a list with one entry per phrase")

    def entry(e: Any) -> Any:
        if isinstance(e, list) and e and all(isinstance(v, (int, float)) for v in e):
            return tuple(float(v) if len(e) == 4 else v for v in e)
        if isinstance(e, list):
            return [entry(b) for b in e]
        return e

    return [entry(e) for e in value]
