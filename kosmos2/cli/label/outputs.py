"""Where a labelling run writes: the journal, and the COCO file or YOLO folder written from it at the end."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...demo.results import count
from ...errors import UserError
from . import records
from .work import Plan


class OutputError(UserError, ValueError):
    """An output path that cannot be written; the message is one line for the user."""


def _check_folder(folder: Path, what: Path) -> None:
    """``folder`` exists and a file can be made in it (tried with a temporary file, removed at once)."""
    if not folder.is_dir():
        raise OutputError(f"cannot write {what}: {folder} is not an existing folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"cannot write {what}: {e.strerror or e} in {folder}") from e


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    _check_folder(path.parent, path)


@dataclass(frozen=True)
class Outputs:
    """The output ``format``, its path ``out`` (a file, or the YOLO folder) and the ``journal``."""

    format: str
    out: Path
    journal: Path

    @classmethod
    def check(cls, format: str, out: Path, journal: Path | None = None) -> Outputs:
        """The outputs for ``--format``/``--out``/``--journal``, checked writable (nothing is left behind);
        :class:`OutputError` if not."""
        if format not in records.FORMATS:
            raise OutputError(f"unknown format {format!r}; choose one of {', '.join(records.FORMATS)}")
        if format == "yolo":
            if out.exists() and not out.is_dir():
                raise OutputError(f"cannot write the YOLO folder {out}: it is a file")
            _check_folder(out if out.is_dir() else out.parent, out)
            journal = journal or out / "labels.jsonl"
        elif format == "coco":
            _check_file(out)
            journal = journal or out.with_suffix(".jsonl")
            if journal.resolve() == out.resolve():
                raise OutputError(f"the journal would be the COCO file {out}: give --journal, or an --out ending .json")
        else:
            _check_file(out)
            if journal is not None and journal.resolve() != out.resolve():
                raise OutputError("with --format jsonl the journal is --out itself: leave out --journal")
            journal = out
        if not (format == "yolo" and journal.parent == out and not out.exists()):
            _check_file(journal)
        return cls(format, out, journal)

    def prepare(self) -> None:
        """Make the YOLO folder (its parent exists: :meth:`check` saw to it)."""
        if self.format == "yolo":
            self.out.mkdir(exist_ok=True)

    def write(self, files: list[str], plan: Plan, folder: Path, journal: records.Journal) -> str:
        """Write the COCO file or the YOLO folder from the ``journal``'s records of ``files`` (atomically, file
        by file); returns what was written, in words."""
        done = [r for f in files if (r := journal.records.get(f)) is not None and "failed" not in r]
        gone = len(set(journal.records) - set(files))
        note = f"; {gone} journal line(s) for files no longer in the folder left out" if gone else ""
        if self.format == "jsonl":
            return f"journal {self.journal}: {len(done)} images labelled{note}"
        if self.format == "coco":
            data = records.coco(done, plan.task, plan.phrases)
            records.write_atomically(self.out, records.coco_text(data))
            counts = ", ".join(
                count(len(data[key]), one, many)
                for key, one, many in (
                    ("images", "image", "images"),
                    ("annotations", "annotation", "annotations"),
                    ("categories", "category", "categories"),
                )
            )
            return f"wrote {self.out} (COCO: {counts}); journal {self.journal}{note}"
        written = records.yolo(done, plan.task, plan.phrases, folder)
        for name, text in written.items():
            records.write_atomically(self.out / name, text)
        label_files = count(len(done), "label file", "label files")
        return f"wrote {self.out} (YOLO: {label_files}, classes.txt, data.yaml); journal {self.journal}{note}"
