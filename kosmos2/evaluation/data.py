"""What an evaluation file holds, read into the protocols' items (pure Python; every box in pixels of the image
as shown, x1 y1 x2 y2). Five formats:

- ``refexp``: our referring-expression JSON lines ``{"image", "expression", "box"}``: comprehension queries.
- ``mdetr``: MDETR's pre-processed JSON, as KOSMOS-2's own evaluation reads it. Images whose entries carry
  ``tokens_positive_eval`` (Flickr30k Entities) give one phrase-grounding query per phrase, the caption's text
  before it as the prompt, its true boxes the annotations whose ``tokens_positive`` overlap the phrase; the
  others (RefCOCO, RefCOCO+, RefCOCOg) one comprehension query per entry, its ``caption`` the expression and
  its one annotation the box.
- ``journal``: a ``label`` caption journal (its ``.run.json`` beside it): one caption per image, and one
  phrase-grounding query per entity.
- ``coco``: a COCO detection file, scored by pycocotools over every category.

A record that cannot be used becomes a :class:`~kosmos2.training.Problem`, never an item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..grounding import PixelBox
from ..runfile import read_run
from ..training.examples import (
    DataError,
    Problem,
    RecordError,
    collect,
    detect_format,
    displayed_size,
    first_record,
    image_file,
    json_lines,
    normalised,
    refexp_record,
)

FORMATS = ("refexp", "mdetr", "journal", "coco")


@dataclass(frozen=True)
class Query:
    """A phrase to locate: the image, the caption's words before it (empty for a referring expression), the
    phrase, its true boxes (any one counts) and where it was read."""

    image: Path
    before: str
    phrase: str
    truth: tuple[PixelBox, ...]
    where: str

    @property
    def prompt(self) -> str:
        """The model's prompt: ``<grounding>{words before}<phrase> {phrase}</phrase>``."""
        return f"<grounding>{self.before.rstrip()}<phrase> {self.phrase.strip()}</phrase>"


@dataclass(frozen=True)
class Captioned:
    """An image and the true entities of its caption: (phrase, its boxes) each."""

    image: Path
    entities: tuple[tuple[str, tuple[PixelBox, ...]], ...]
    where: str


@dataclass(frozen=True)
class CocoImage:
    """An image of a COCO file, by its id there."""

    id: int
    image: Path


@dataclass
class Benchmark:
    """What a file gives each protocol: comprehension queries, grounding queries, captions and COCO images (with
    the file and its categories by id), and the records left out."""

    source: Path
    fmt: str
    comprehension: list[Query] = field(default_factory=list)
    grounding: list[Query] = field(default_factory=list)
    captions: list[Captioned] = field(default_factory=list)
    coco_images: list[CocoImage] = field(default_factory=list)
    categories: dict[int, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def read_benchmark(path: Path, images: Path, fmt: str = "auto") -> Benchmark:
    """The items of evaluation file ``path`` (format ``fmt``, or found from its first record), its image paths
    relative to ``images`` (:class:`~kosmos2.training.DataError` when it cannot be read at all)."""
    if fmt == "auto":
        fmt = _format_of(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown evaluation format {fmt!r}; use one of {', '.join(FORMATS)}")
    bench = Benchmark(path, fmt)
    if fmt == "refexp":
        collect(json_lines(path, _refexp), images, bench.comprehension, bench.problems)
    elif fmt == "journal":
        run = read_run(path.with_name(path.name + ".run.json"), "it is written by label beside its journal")
        if run.get("task") != "caption":
            raise DataError(f"{path}: a {run.get('task')!r} journal; eval reads caption journals")
        for where, make in json_lines(path, _journal):
            try:
                captioned, queries = make(images)
            except RecordError as e:
                bench.problems.append(Problem(where, str(e)))
                continue
            bench.captions.append(captioned)
            bench.grounding.extend(queries)
    else:
        data = _json_file(path)
        if fmt == "coco":
            _read_coco(bench, data, images)
        else:
            _read_mdetr(bench, data, images)
    return bench


def _format_of(path: Path) -> str:
    first = first_record(path)
    if isinstance(first, dict) and isinstance(first.get("images"), list) and first["images"]:
        return "mdetr" if "caption" in first["images"][0] else "coco"
    fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: a {fmt} file; eval reads {', '.join(FORMATS)} files")
    return fmt


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e.msg})") from e
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)):
        raise DataError(f"{path}: no images list")
    if not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: no annotations list")
    return data


def _pixel_box(box: object, size: tuple[int, int]) -> PixelBox:
    """A pixel box checked against the image's size (as shown)."""
    x1, y1, x2, y2 = normalised(box, *size)
    return (x1 * size[0], y1 * size[1], x2 * size[0], y2 * size[1])


def _scaled(box: object, size: tuple[int, int]) -> object:
    """A normalised box of a journal in pixels (anything else as it is, for the check to name)."""
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
        return [v * s for v, s in zip(box, size * 2)]
    return box


def _xywh(box: object) -> list[float]:
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise RecordError(f"bbox must be [x, y, width, height], got {box!r}")
    return [box[0], box[1], box[0] + box[2], box[1] + box[3]]


def _refexp(record: dict[str, Any], images: Path, where: str) -> list[Query]:
    image, expression, (x1, y1, x2, y2), (w, h) = refexp_record(record, images)
    return [Query(image, "", expression, ((x1 * w, y1 * h, x2 * w, y2 * h),), where)]


def _journal(record: dict[str, Any], images: Path, where: str) -> tuple[Captioned, list[Query]]:
    if "failed" in record:
        raise RecordError(f"labelling failed: {record['failed']}")
    image = image_file(images, record.get("file"))
    size = displayed_size(image)
    caption, entities = record.get("caption"), record.get("entities")
    if not isinstance(caption, str) or not isinstance(entities, list):
        raise RecordError("a caption journal record needs a caption and an entities list")
    truth, queries = [], []
    for e in entities:
        span = e.get("span") if isinstance(e, dict) else None
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)):
            raise RecordError(f"an entity's span {span!r} is not [start, end]")
        if not 0 <= span[0] < span[1] <= len(caption):
            raise RecordError(f"span {span} lies outside the caption")
        raw = e.get("boxes")
        if not isinstance(raw, list) or not raw:
            raise RecordError("an entity needs a non-empty list of boxes")
        boxes = tuple(_pixel_box(_scaled(b, size), size) for b in raw)
        phrase = caption[span[0] : span[1]]
        truth.append((phrase, boxes))
        queries.append(Query(image, caption[: span[0]], phrase, boxes, where))
    return Captioned(image, tuple(truth), where), queries


def _read_coco(bench: Benchmark, data: dict[str, Any], images: Path) -> None:
    try:
        bench.categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{bench.source}: not a COCO detection file (categories: {e})") from e
    for entry in data["images"]:
        where = f"{bench.source}: image {entry.get('id') if isinstance(entry, dict) else entry!r}"
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
                raise RecordError("an image needs an integer id")
            image = image_file(images, entry.get("file_name"))
            shown = displayed_size(image)
            if shown != (entry.get("width"), entry.get("height")):
                raise RecordError(
                    f"{entry.get('width')}x{entry.get('height')} in the file, but {image} is {shown[0]}x{shown[1]} "
                    "as shown (EXIF orientation applied)"
                )
            bench.coco_images.append(CocoImage(entry["id"], image))
        except RecordError as e:
            bench.problems.append(Problem(where, str(e)))


def _read_mdetr(bench: Benchmark, data: dict[str, Any], images: Path) -> None:
    boxes: dict[Any, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        if isinstance(a, dict):
            boxes.setdefault(a.get("image_id"), []).append(a)
    for entry in data["images"]:
        where = f"{bench.source}: image {entry.get('id') if isinstance(entry, dict) else entry!r}"
        try:
            if not isinstance(entry, dict):
                raise RecordError("an image entry must be an object")
            queries = _mdetr_queries(entry, boxes.get(entry.get("id"), []), images, where)
        except RecordError as e:
            bench.problems.append(Problem(where, str(e)))
            continue
        if "tokens_positive_eval" in entry:
            bench.grounding.extend(queries)
        else:
            bench.comprehension.extend(queries)


def _mdetr_queries(entry: dict[str, Any], annotations: list[dict[str, Any]], images: Path, where: str) -> list[Query]:
    image = image_file(images, entry.get("file_name"))
    size = displayed_size(image)
    caption = entry.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise RecordError("no caption")
    if "tokens_positive_eval" not in entry:  # a referring expression: its one box
        if len(annotations) != 1:
            raise RecordError(f"a referring expression needs exactly one annotation, it has {len(annotations)}")
        return [Query(image, "", caption, (_pixel_box(_xywh(annotations[0].get("bbox")), size),), where)]
    queries = []
    for spans in entry["tokens_positive_eval"]:
        if not (isinstance(spans, list) and spans and all(_is_span(s, caption) for s in spans)):
            raise RecordError(f"tokens_positive_eval holds {spans!r}, not a list of [start, end] in the caption")
        start, end = spans[0]
        truth = tuple(
            _pixel_box(_xywh(a.get("bbox")), size)
            for a in annotations
            if any(_overlap(s, t) for s in spans for t in a.get("tokens_positive") or [])
        )
        if not truth:
            raise RecordError(f"the phrase {caption[start:end]!r} has no annotation")
        queries.append(Query(image, caption[:start], caption[start:end], truth, where))
    return queries


def _is_span(span: object, caption: str) -> bool:
    return (
        isinstance(span, list)
        and len(span) == 2
        and all(isinstance(v, int) for v in span)
        and 0 <= span[0] < span[1] <= len(caption)
    )


def _overlap(a: list[int], b: object) -> bool:
    return isinstance(b, list) and len(b) == 2 and a[0] < b[1] and b[0] < a[1]
