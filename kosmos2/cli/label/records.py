"""Labelling a folder, the parts without a model: the folder walk, the JSONL journal and its resume
bookkeeping, and the COCO / YOLO files written from it. Pure Python (no torch).

The journal has one JSON object per line and per file, appended as each image finishes:

- a labelled image: ``{"file", "width", "height", "caption", "entities", "timing"}``, where ``file`` is
  the path relative to the labelled folder and each entity has ``phrase``, ``row`` (the phrase's index
  in the request), ``span``, ``boxes`` (normalised x1, y1, x2, y2), ``pixel_boxes``, ``scores`` (each
  box's probability) and ``score`` (the best of them);
- a file that could not be used: ``{"file", "failed": reason}``.

Beside it, ``<journal>.run.json`` holds the run's parameters, so that a rerun resumes only the same
command. The COCO and YOLO files depend on the journal's contents only (not on its order or the
timings), so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...runfile import changes, read_run

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tiff", ".tif")
FORMATS = ("coco", "yolo", "jsonl")
SCORE_DIGITS = 4  # scores in the COCO file: enough for a probability, and stable across batch layouts
YOLO_DIGITS = 6

Record = dict[str, Any]


class JournalError(UserError, ValueError):
    """A journal that cannot be resumed (written by another command, damaged, or listing a file twice)."""


# --------------------------------------------------------------------------- the folder


def find_images(folder: Path, recursive: bool = False) -> list[str]:
    """The image files in ``folder`` (by extension, any case), as sorted paths relative to it with ``/``."""
    if recursive:
        found = [Path(root, name) for root, _, names in os.walk(folder) for name in names]
    else:
        found = [p for p in folder.iterdir()]
    return sorted(
        p.relative_to(folder).as_posix() for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def yolo_label_path(file: str) -> str:
    """The label file of image ``file`` under the YOLO ``labels/`` folder: same path, ``.txt``."""
    return str(Path(file).with_suffix(".txt").as_posix())


def yolo_collisions(files: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of images that would share one YOLO label file (``a.jpg`` and ``a.png``)."""
    seen: dict[str, str] = {}
    pairs = []
    for f in files:
        label = yolo_label_path(f)
        if label in seen:
            pairs.append((seen[label], f))
        else:
            seen[label] = f
    return pairs


# --------------------------------------------------------------------------- the journal


@dataclass
class Journal:
    """What a journal holds: each file's record, in the order written."""

    records: dict[str, Record] = field(default_factory=dict)
    dropped_partial_line: bool = False  # the last line was cut by a kill: it is dropped and redone
    complete_bytes: int = 0  # the length of the file up to its partial last line
    stamp: tuple[int, int] | None = None  # the file's (size, mtime in ns) when read; None: no file

    @property
    def failed(self) -> list[Record]:
        """The records of files that could not be used (``file`` and ``failed``: the reason)."""
        return [r for r in self.records.values() if "failed" in r]


def read_journal(path: Path) -> Journal:
    """Read a journal (an empty one if ``path`` does not exist).

    A last line without its newline is what a kill during a write leaves: it is dropped (that image is
    labelled again). Any other line that is not a record, or a file listed twice, raises :class:`JournalError`.
    """
    journal = Journal()
    if not path.exists():
        return journal
    journal.stamp = _stamp(path)
    data = path.read_bytes()
    journal.complete_bytes = data.rfind(b"\n") + 1
    journal.dropped_partial_line = journal.complete_bytes < len(data)
    lines = data[: journal.complete_bytes].decode("utf-8").split("\n")
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise JournalError(f"line {number} of {path} is not JSON ({e.msg}); fix or delete that line") from e
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            raise JournalError(f"line {number} of {path} is not a labelling record (no 'file')")
        if record["file"] in journal.records:
            raise JournalError(f"{path} lists {record['file']} twice (line {number}): were two runs writing to it?")
        journal.records[record["file"]] = record
    return journal


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def record_line(record: Record) -> str:
    """One journal line (with its newline)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def run_file(journal: Path) -> Path:
    """Where the run's parameters are kept beside ``journal``."""
    return journal.with_name(journal.name + ".run.json")


def check_resumable(journal: Path, run: Mapping[str, Any]) -> None:
    """Raise :class:`JournalError` unless ``journal`` is absent, empty, or was written by a run with parameters
    ``run``."""
    if not journal.exists() or journal.stat().st_size == 0:
        return
    params = run_file(journal)
    if not params.exists():
        raise JournalError(
            f"{journal} exists but {params.name} (its run's parameters) does not; "
            "use another --out, or delete the journal to start over"
        )
    before = read_run(params, "delete it and the journal to start over")
    if shown := changes(before, run):
        raise JournalError(
            f"{journal} was written by a different command ({shown}); use another --out, "
            "or delete the journal to start over"
        )


class JournalWriter:
    """Appends records to a journal, each line flushed to disk before the next image counts as done.

    Opening takes an exclusive lock on the journal (a second run on it fails at once instead of writing
    the same images twice), cuts a partial last line left by a kill, and writes the run's parameters
    beside it. :attr:`journal` is what the file holds: what it held when it was opened (``known``, read
    before, when the file has not changed since, else read again), and each record appended since.
    """

    def __init__(self, path: Path, run: Mapping[str, Any], known: Journal | None = None) -> None:
        import fcntl  # POSIX; imported here so that reading journals needs nothing of the kind

        self.path = path
        self._file = open(path, "a+b")  # noqa: SIM115  (closed by close())
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._file.close()
            raise JournalError(f"another labelling run is writing to {path}; wait for it to finish") from e
        try:
            check_resumable(path, run)
            unchanged = known is not None and known.stamp == (_stamp(path) if path.stat().st_size else None)
            self.journal = known if unchanged and known is not None else read_journal(path)
            self._file.truncate(self.journal.complete_bytes)
            write_atomically(run_file(path), json.dumps(dict(run), ensure_ascii=False, indent=1) + "\n")
        except BaseException:
            self._file.close()
            raise

    def append(self, record: Record) -> None:
        """Write one record's line and flush it to the disk."""
        self._file.write(record_line(record).encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.journal.records[record["file"]] = record

    def close(self) -> None:
        """Release the journal (and its lock)."""
        self._file.close()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pending_files(files: Sequence[str], journal: Journal) -> list[str]:
    """The files of ``files`` that the journal has no record of, in order."""
    return [f for f in files if f not in journal.records]


# --------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class Annotation:
    """One box of a labelled image: its category's name, pixel box (x1, y1, x2, y2) and score."""

    category: str
    pixel_box: tuple[float, float, float, float]
    score: float | None


def annotations_of(record: Record, task: str, phrases: Sequence[str]) -> list[Annotation]:
    """The boxes of one image's record, in entity order.

    ``detect``: every entity, in the category of its row's phrase. ``ground``: the first entity of each
    row that is that row's phrase (what the model says after it is not a label); a phrase without a box
    has no annotation. ``caption``: every entity, in the category named by its phrase.
    """
    out: list[Annotation] = []
    grounded: set[int] = set()
    for e in record["entities"]:
        if task == "ground":
            if e["row"] in grounded or e["phrase"] != phrases[e["row"]]:
                continue
            grounded.add(e["row"])
        category = e["phrase"] if task == "caption" else phrases[e["row"]]
        out.extend(
            Annotation(category, tuple(box), score) for box, score in zip(e["pixel_boxes"], e["scores"], strict=True)
        )
    return out


def categories(task: str, phrases: Sequence[str], records: Iterable[Record]) -> list[str]:
    """Category names in order: the phrases as given, or for ``caption`` each phrase of the captions in the
    order it first appears (``records`` in file order)."""
    if task != "caption":
        return list(phrases)
    names: dict[str, None] = {}
    for r in records:
        for e in r["entities"]:
            if e["pixel_boxes"]:
                names.setdefault(e["phrase"], None)
    return list(names)


def coco_bbox(box: Sequence[float]) -> list[float]:
    """Pixel (x1, y1, x2, y2) -> COCO [x, y, width, height]."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def yolo_line(category: int, box: Sequence[float], width: int, height: int) -> str:
    """``class cx cy w h`` with the centre and size normalised by the image's width and height."""
    x1, y1, x2, y2 = box
    values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
    return f"{category} " + " ".join(f"{v:.{YOLO_DIGITS}f}" for v in values)


def _score(score: float | None) -> float | None:
    return None if score is None else round(score, SCORE_DIGITS)


def coco(records: Sequence[Record], task: str, phrases: Sequence[str]) -> dict[str, Any]:
    """The COCO detection dict of ``records`` (labelled images, in file order): image ids 1.. in that order,
    category ids 1.. in :func:`categories` order, annotation ids 1.. image by image."""
    names = categories(task, phrases, records)
    category_id = {name: i + 1 for i, name in enumerate(names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, r in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": r["file"], "width": r["width"], "height": r["height"]})
        for a in annotations_of(r, task, phrases):
            bbox = coco_bbox(a.pixel_box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id[a.category],
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "score": _score(a.score),
                    "iscrowd": 0,
                }
            )
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in category_id.items()],
    }


def yolo(records: Sequence[Record], task: str, phrases: Sequence[str], images_folder: Path) -> dict[str, str]:
    """The YOLO files of ``records`` (labelled images, in file order) by path relative to the output folder:
    ``labels/<image path>.txt`` per image (empty when it has no box), ``classes.txt`` and ``data.yaml``."""
    names = categories(task, phrases, records)
    index = {name: i for i, name in enumerate(names)}
    files = {}
    for r in records:
        lines = [
            yolo_line(index[a.category], a.pixel_box, r["width"], r["height"]) for a in annotations_of(r, task, phrases)
        ]
        files["labels/" + yolo_label_path(r["file"])] = "".join(line + "\n" for line in lines)
    files["classes.txt"] = "".join(name + "\n" for name in names)
    files["data.yaml"] = (  # JSON strings and lists are YAML flow scalars and sequences
        "# written by python -m kosmos2 label; the label files are in labels/, by image path\n"
        f"path: {json.dumps(str(images_folder), ensure_ascii=False)}\n"
        'train: "."\nval: "."\n'
        f"nc: {len(names)}\n"
        f"names: {json.dumps(names, ensure_ascii=False)}\n"
    )
    return files


# --------------------------------------------------------------------------- writing


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a reader (or a
    kill) sees the old file or the new one, never a part. The file gets the usual permissions (the umask's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    with open(temp, "x", encoding="utf-8", newline="\n") as f:  # "x", not mkstemp, which makes it owner-only
        try:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def coco_text(data: Mapping[str, Any]) -> str:
    """The COCO file's text (one line, as COCO's own annotation files)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"
