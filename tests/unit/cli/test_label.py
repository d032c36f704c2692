"""``python -m kosmos2 label``: the output formats against hand-derived numbers and pycocotools, the
journal and resume (a run killed with SIGKILL, then rerun, writes the same bytes), bad images reported
and skipped, and bad commands refused with one line and nothing written.

The runs use the tiny random checkpoint: captions and boxes are random, but greedy decoding makes them
the same on every run. ``detect`` with ``--threshold 0`` keeps boxes however unlikely, so there are
plenty to check.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO

from kosmos2.cli.label import records as labels
from kosmos2.cli.label import main
from labelling import DETECT, PHRASES, journal_lines, make_folder, split_scores, without_timing
from launch import ROOT

BAD = {"holiday.png": "not a supported image file", "cut.jpg": "damaged or truncated", "bomb.png": "too large"}


# ----------------------------------------------------------------------------- a folder to label

def label(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("label") / "images")


# ----------------------------------------------------------------------------- formats, by hand


def test_yolo_line_and_coco_bbox_of_a_known_box():
    # pixel box (10, 20)-(50, 80) on a 200 x 100 image: centre (30, 50), size 40 x 60
    assert labels.yolo_line(1, (10, 20, 50, 80), 200, 100) == "1 0.150000 0.500000 0.200000 0.600000"
    assert labels.coco_bbox((10, 20, 50, 80)) == [10, 20, 40, 60]


def _entity(phrase: str, row: int, pixel_boxes: list, score: float | None = 0.5) -> dict:
    return {"phrase": phrase, "row": row, "span": [0, len(phrase)], "boxes": [], "pixel_boxes": pixel_boxes,
            "scores": [score] * len(pixel_boxes), "score": score}


def test_coco_of_detect_records():
    records = [
        {"file": "a.jpg", "width": 200, "height": 100, "caption": "", "timing": {},
         "entities": [_entity("a cat", 1, [[0, 0, 20, 10]], 0.123456),
                      {**_entity("a dog", 0, [[5, 5, 15, 25], [100, 50, 200, 100]]), "scores": [0.9, 0.25]}]},
        {"file": "sub/b.png", "width": 10, "height": 10, "caption": "", "timing": {}, "entities": []},
    ]
    assert labels.coco(records, "detect", PHRASES) == {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "sub/b.png", "width": 10, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 10], "area": 200, "score": 0.1235,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 20], "area": 200, "score": 0.9,
             "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [100, 50, 100, 50], "area": 5000, "score": 0.25,
             "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a dog"}, {"id": 2, "name": "a cat"}],
    }
    files = labels.yolo(records, "detect", PHRASES, Path("/data/images"))
    assert files["labels/a.txt"] == ("1 0.050000 0.050000 0.100000 0.100000\n"
                                     "0 0.050000 0.150000 0.050000 0.200000\n"
                                     "0 0.750000 0.750000 0.500000 0.500000\n")
    assert files["labels/sub/b.txt"] == ""
    assert files["classes.txt"] == "a dog\na cat\n"
    assert yaml.safe_load(files["data.yaml"]) == {"path": "/data/images", "train": ".", "val": ".", "nc": 2,
                                                  "names": ["a dog", "a cat"]}


def test_ground_keeps_each_rows_own_phrase_only():
    record = {"file": "a.jpg", "width": 100, "height": 100, "entities": [
        _entity("a dog", 0, [[1, 2, 3, 4]]),
        _entity("a ball", 0, [[5, 5, 9, 9]]),  # what the model said after the phrase: not a label
        _entity("a dog", 0, [[6, 6, 8, 8]]),  # a second mention in the same row
    ]}  # row 1 ("a cat") found no box: no annotation
    assert labels.annotations_of(record, "ground", PHRASES) == [labels.Annotation("a dog", (1, 2, 3, 4), 0.5)]


def test_caption_categories_in_order_of_first_appearance():
    records = [{"entities": [_entity("a tree", 0, [[0, 0, 1, 1]]), _entity("the sky", 0, [])]},
               {"entities": [_entity("a man", 0, [[0, 0, 1, 1]]), _entity("a tree", 0, [[1, 1, 2, 2]])]}]
    assert labels.categories("caption", (), records) == ["a tree", "a man"]  # "the sky" has no box


def test_find_images_sorted_by_extension_any_case(tmp_path):
    for name in ("b.JPG", "a.png", "c.txt", "d.tiff", "sub/e.webp", "sub/deeper/f.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    assert labels.find_images(tmp_path) == ["a.png", "b.JPG", "d.tiff"]
    assert labels.find_images(tmp_path, recursive=True) == ["a.png", "b.JPG", "d.tiff", "sub/deeper/f.gif",
                                                            "sub/e.webp"]
    assert labels.yolo_collisions(["a.jpg", "a.png", "b.png"]) == [("a.jpg", "a.png")]


def test_the_formats_module_imports_no_torch():
    code = "import sys, kosmos2.cli.label.records; assert 'torch' not in sys.modules, 'kosmos2.cli.label.records imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ----------------------------------------------------------------------------- the journal


def test_journal_drops_a_partial_last_line_and_refuses_damage(tmp_path):
    path = tmp_path / "j.jsonl"
    labels.JournalWriter(path, {"task": "detect"}).close()  # the run's parameters beside it
    path.write_text('{"file": "a.jpg", "failed": "x"}\n{"file": "b.j')
    journal = labels.read_journal(path)
    assert list(journal.records) == ["a.jpg"] and journal.dropped_partial_line
    with labels.JournalWriter(path, {"task": "detect"}) as writer:  # cuts the partial line, then appends
        writer.append({"file": "b.jpg", "failed": "y"})
    assert path.read_text() == '{"file": "a.jpg", "failed": "x"}\n{"file":"b.jpg","failed":"y"}\n'
    path.write_text('{"file": "a.jpg"}\nnot json\n{"file": "b.jpg"}\n')
    with pytest.raises(labels.JournalError, match="line 2"):
        labels.read_journal(path)
    path.write_text('{"file": "a.jpg"}\n{"file": "a.jpg"}\n')
    with pytest.raises(labels.JournalError, match="twice"):
        labels.read_journal(path)


def test_journal_resumes_only_the_same_command_and_one_writer_at_a_time(tmp_path):
    path = tmp_path / "j.jsonl"
    with labels.JournalWriter(path, {"task": "detect", "phrases": ["a dog"]}) as writer:
        writer.append({"file": "a.jpg", "failed": "x"})
        with pytest.raises(labels.JournalError, match="another labelling run"):
            labels.JournalWriter(path, {"task": "detect", "phrases": ["a dog"]})
    labels.check_resumable(path, {"task": "detect", "phrases": ["a dog"]})
    with pytest.raises(labels.JournalError, match="phrases"):
        labels.check_resumable(path, {"task": "detect", "phrases": ["a cat"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl", "j.jsonl.run.json"]  # no temporary file left


# ----------------------------------------------------------------------------- labelling a folder


@pytest.fixture(scope="module")
def detect_coco(folder, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coco") / "labels.json"
    assert label(folder, *DETECT, "--recursive", "--format", "coco", "--out", out,
                 "--checkpoint", tiny_checkpoint) == 0
    return out


def test_detect_coco_loads_in_pycocotools_and_matches_the_journal(detect_coco, folder):
    records = journal_lines(detect_coco.with_suffix(".jsonl"))
    files = labels.find_images(folder, recursive=True)
    assert sorted(r["file"] for r in records) == files  # one line per image file, each once
    failed = {r["file"]: r["failed"] for r in records if "failed" in r}
    assert set(failed) == set(BAD)
    for name, reason in BAD.items():
        assert reason in failed[name]
    done = {r["file"]: r for r in records if "failed" not in r}
    assert "sub/inner.png" in done and (done["deep.png"]["width"], done["deep.png"]["height"]) == (50, 30)

    coco = COCO(str(detect_coco))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(PHRASES)
    assert sorted(i["file_name"] for i in coco.loadImgs(coco.getImgIds())) == sorted(done)
    boxes = sum(len(e["pixel_boxes"]) for r in done.values() for e in r["entities"])
    assert boxes > len(done)  # --threshold 0: boxes for (almost) every phrase of every image
    assert len(coco.getAnnIds()) == boxes
    results = coco.loadRes(coco.loadAnns(coco.getAnnIds()))
    assert len(results.getAnnIds()) == boxes
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        assert ann["area"] == results.anns[ann["id"]]["area"] == w * h  # pycocotools' area from the bbox
        assert 0 <= ann["score"] <= 1 and ann["iscrowd"] == 0
    for name, r in done.items():  # each COCO box is the journal's normalised box in pixels
        image_id = next(i["id"] for i in coco.loadImgs(coco.getImgIds()) if i["file_name"] == name)
        expected = sorted(
            (coco.getCatIds(catNms=[PHRASES[e["row"]]])[0],
             [round(x1 * r["width"]), round(y1 * r["height"]),
              round(x2 * r["width"]) - round(x1 * r["width"]), round(y2 * r["height"]) - round(y1 * r["height"])])
            for e in r["entities"] for x1, y1, x2, y2 in e["boxes"])
        got = sorted((a["category_id"], a["bbox"]) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])))
        assert got == expected


def test_yolo_from_the_same_journal_without_relabelling(detect_coco, folder, tmp_path, capsys, tiny_checkpoint):
    journal = detect_coco.with_suffix(".jsonl")
    before = journal.read_bytes()
    out = tmp_path / "yolo"
    assert label(folder, *DETECT, "--recursive", "--format", "yolo", "--out", out, "--journal", journal,
                 "--checkpoint", tiny_checkpoint) == 0
    assert journal.read_bytes() == before
    err = capsys.readouterr().err
    assert "done 0 images, skipped 16" in err and "Model ready" not in err  # nothing to label: no model loaded
    done = {r["file"]: r for r in journal_lines(journal) if "failed" not in r}
    assert sorted(p.relative_to(out / "labels").as_posix() for p in (out / "labels").rglob("*.txt")) == sorted(
        labels.yolo_label_path(f) for f in done)
    for name, r in done.items():
        lines = (out / "labels" / labels.yolo_label_path(name)).read_text().splitlines()
        assert len(lines) == sum(len(e["pixel_boxes"]) for e in r["entities"])
        for line in lines:
            category, *values = line.split()
            assert int(category) in (0, 1) and len(values) == 4
            assert all(0.0 <= float(v) <= 1.0 for v in values)
    assert (out / "classes.txt").read_text().splitlines() == list(PHRASES)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == list(PHRASES) and data["nc"] == 2 and Path(data["path"]) == folder.resolve()


def test_a_run_reads_its_journal_once_and_writes_from_what_it_appended(folder, tmp_path, monkeypatch,
                                                                      tiny_checkpoint):
    reads = []
    real = labels.read_journal
    monkeypatch.setattr(labels, "read_journal", lambda path: reads.append(path) or real(path))
    out, journal = tmp_path / "labels.json", tmp_path / "journal.jsonl"
    assert label(folder, *DETECT, "--format", "coco", "--out", out, "--journal", journal,
                 "--checkpoint", tiny_checkpoint) == 0
    assert reads == [journal]  # read once before the model loads; the writer and the COCO file reuse it
    labelled = [r for r in journal_lines(journal) if "failed" not in r]
    assert len(json.loads(out.read_text())["images"]) == len(labelled) > 0  # every image appended is in the file


def test_the_writer_reads_a_journal_again_that_changed_since_it_was_read(tmp_path):
    path = tmp_path / "journal.jsonl"
    labels.JournalWriter(path, {"task": "detect"}).close()  # the run's parameters beside it
    path.write_text('{"file":"a.png","failed":"x"}\n')
    known = labels.read_journal(path)
    with path.open("a") as f:  # another process, between the check and the lock
        f.write('{"file":"b.png","failed":"y"}\n')
    with labels.JournalWriter(path, {"task": "detect"}, known=known) as writer:
        assert sorted(writer.journal.records) == ["a.png", "b.png"]
    with labels.JournalWriter(path, {"task": "detect"}, known=labels.read_journal(path)) as writer:
        writer.append({"file": "c.png", "failed": "z"})
        assert sorted(writer.journal.records) == ["a.png", "b.png", "c.png"]


def test_outputs_get_the_usual_permissions_and_counts_read_in_the_singular(tmp_path, capsys, tiny_checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes((ROOT / "assets" / "cat.jpg").read_bytes())
    before = os.umask(0o027)
    try:
        out = tmp_path / "labels.json"
        assert label(folder, "--phrases", "a cat", "--threshold", "0", "--max-instances", "1", "--out", out,
                     "--checkpoint", tiny_checkpoint) == 0
        assert label(folder, "--phrases", "a cat", "--threshold", "0", "--max-instances", "1", "--format", "yolo",
                     "--out", tmp_path / "yolo", "--journal", out.with_suffix(".jsonl"), "--checkpoint",
                     tiny_checkpoint) == 0
        plain = tmp_path / "plain.txt"
        plain.write_text("made by open()")  # what the umask gives a new file
    finally:
        os.umask(before)
    mode = plain.stat().st_mode & 0o777
    assert mode == 0o640
    written = [out, out.with_suffix(".jsonl"), labels.run_file(out.with_suffix(".jsonl")),
               tmp_path / "yolo" / "classes.txt", tmp_path / "yolo" / "data.yaml", tmp_path / "yolo" / "labels" / "cat.txt"]
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: mode for p in written}
    err = capsys.readouterr().err
    assert f"wrote {out} (COCO: 1 image, 1 annotation, 1 category)" in err, err
    assert f"wrote {tmp_path / 'yolo'} (YOLO: 1 label file, classes.txt, data.yaml)" in err, err


@pytest.mark.parametrize("task", ["ground", "caption"])
def test_ground_and_caption_to_jsonl(task, folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "labels.jsonl"
    phrases = ["--phrases", PHRASES[0], "--phrases", PHRASES[1]] if task == "ground" else []
    assert label(folder, "--task", task, *phrases, "--format", "jsonl", "--out", out, "--max-new-tokens", "6",
                 "--checkpoint", tiny_checkpoint) == 0
    records = journal_lines(out)
    assert sorted(r["file"] for r in records) == labels.find_images(folder)  # not sub/: no --recursive
    for r in records:
        if "failed" not in r:
            assert isinstance(r["caption"], str) and isinstance(r["entities"], list)
            assert r["timing"]["new_tokens"] <= 6
    if task == "ground":
        assert all(r["caption"].startswith("a dog") for r in records if "failed" not in r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl", "labels.jsonl.run.json"]


# ----------------------------------------------------------------------------- kill, stop and resume


def _cli(folder: Path, out: Path, checkpoint: Path | None) -> list[str]:
    model = ["--checkpoint", str(checkpoint)] if checkpoint else ["--tiny"]
    return [sys.executable, "-m", "kosmos2", "label", str(folder), *DETECT, "--format", "coco", "--out", str(out),
            *model]


def scores_apart(records: list[dict]) -> tuple[list[dict], list[float]]:
    """The records without their timing, their entities' scores taken out (:func:`split_scores`), and the
    scores in order."""
    kept, scores = [], []
    for record in without_timing(records):
        if "entities" in record:
            entities, found = split_scores(record["entities"])
            record, scores = {**record, "entities": entities}, scores + found
        kept.append(record)
    return kept, scores


def assert_same_labels_but_grouping(got: Path, want: Path) -> None:
    """The promise for runs whose images shared batches differently (a resumed run): the same journal records
    and COCO annotations, boxes included, and scores equal within a relative 1e-5 (the COCO file's, rounded
    to 4 decimals, within 1e-4)."""
    (records, scores), (want_records, want_scores) = (scores_apart(journal_lines(p.with_suffix(".jsonl")))
                                                      for p in (got, want))
    assert records == want_records
    assert scores == pytest.approx(want_scores, rel=1e-5, abs=0)
    coco, want_coco = (json.loads(p.read_text()) for p in (got, want))
    pairs = list(zip(coco.pop("annotations"), want_coco.pop("annotations"), strict=True))
    assert coco == want_coco
    for a, b in pairs:
        assert a.pop("score") == pytest.approx(b.pop("score"), abs=1.01e-4) and a == b


def test_a_run_killed_with_sigkill_resumes_to_the_same_files(tmp_path, tiny_checkpoint):
    folder = make_folder(tmp_path / "images", count=30)
    whole, killed = tmp_path / "whole" / "labels.json", tmp_path / "killed" / "labels.json"
    whole.parent.mkdir(), killed.parent.mkdir()
    subprocess.run(_cli(folder, whole, tiny_checkpoint), cwd=ROOT, check=True, capture_output=True)

    journal = killed.with_suffix(".jsonl")
    proc = subprocess.Popen(_cli(folder, killed, tiny_checkpoint), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_bytes().count(b"\n") >= 4):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the journal did not grow"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not killed.exists()  # COCO is written only at the end
    lines_at_kill = journal.read_bytes().count(b"\n")
    assert lines_at_kill < 34  # the run was cut short

    rerun = subprocess.run(_cli(folder, killed, tiny_checkpoint), cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {lines_at_kill}" in rerun.stderr
    assert_same_labels_but_grouping(killed, whole)
    for out in (whole, killed):  # and the YOLO files, from each journal
        assert label(folder, *DETECT, "--format", "yolo", "--out", out.parent / "yolo", "--journal",
                     out.with_suffix(".jsonl"), "--checkpoint", tiny_checkpoint) == 0
    for path in sorted((whole.parent / "yolo").rglob("*")):
        twin = killed.parent / "yolo" / path.relative_to(whole.parent / "yolo")
        assert path.is_dir() or path.read_bytes() == twin.read_bytes(), path  # (YOLO has no scores)


def test_each_appended_line_is_readable_by_another_reader_at_once(tmp_path):
    path = tmp_path / "j.jsonl"
    with labels.JournalWriter(path, {"task": "detect"}) as writer:
        for n, name in enumerate(["a.jpg", "b.jpg", "c.jpg"], start=1):
            writer.append({"file": name, "failed": "x"})
            with open(path, "rb") as reader:  # another open file: sees what reached the OS, not Python's buffer
                assert reader.read().count(b"\n") == n


# `label ARGS...` (argv 3 on), sending itself the signal named by argv 1 at the end of the journal writer's
# Nth append (N: argv 2): once the line is written, before append returns and the image counts as done.
SIGNAL_IN_APPEND = """
import os, signal, sys
from kosmos2.cli.label import records as labels
from kosmos2.cli.label import main

append, appended = labels.JournalWriter.append, []

def append_then_signal(self, record):
    append(self, record)
    appended.append(record["file"])
    if len(appended) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.Signals[sys.argv[1]])

labels.JournalWriter.append = append_then_signal
sys.exit(main(sys.argv[3:]))
"""


def test_a_sigkill_right_after_an_append_loses_nothing_reported_done(tmp_path, tiny_checkpoint):
    folder = make_folder(tmp_path / "images", count=8)
    out = tmp_path / "labels.json"
    args = _cli(folder, out, tiny_checkpoint)[4:]
    for appends in (1, 2, 6):
        killed = subprocess.run([sys.executable, "-c", SIGNAL_IN_APPEND, "SIGKILL", str(appends), *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert len(journal_lines(out.with_suffix(".jsonl"))) == appends
        out.with_suffix(".jsonl").unlink()


def test_a_sigterm_during_an_append_counts_that_image_in_the_summary(tmp_path, tiny_checkpoint):
    out = tmp_path / "labels.json"
    args = _cli(make_folder(tmp_path / "images", count=8), out, tiny_checkpoint)[4:]
    stopped = subprocess.run([sys.executable, "-c", SIGNAL_IN_APPEND, "SIGTERM", "2", *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 143, stopped.stderr
    done = re.search(r"done (\d+) images, skipped 0 \(already in the journal\), failed (\d+)", stopped.stderr)
    assert done and int(done[1]) + int(done[2]) == len(journal_lines(out.with_suffix(".jsonl"))) >= 2, stopped.stderr


def _new_tiny_folders(before: set[Path]) -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("kosmos2-tiny-*")) - before


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_finish_the_images_in_progress_and_say_how_to_resume(sig, status, tmp_path):
    """What ``docker stop``, systemd and ``timeout`` send (SIGTERM) does what Ctrl-C (SIGINT) does."""
    folder = make_folder(tmp_path / "images", count=60)
    out = tmp_path / "labels.json"
    journal = out.with_suffix(".jsonl")
    before = set(Path(tempfile.gettempdir()).glob("kosmos2-tiny-*"))
    proc = subprocess.Popen(_cli(folder, out, None), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline, "the journal did not grow"
        time.sleep(0.005)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    assert f"stopped ({sig.name}): finishing the images in progress" in stderr
    done = re.search(r"done (\d+) images, skipped 0 \(already in the journal\), failed (\d+)", stderr)
    assert done, stderr
    lines = len(journal_lines(journal))
    assert lines == int(done[1]) + int(done[2]) < 64  # every image counted is in the journal, and it stopped
    assert f"rerun the same command to resume ({journal} keeps what is done)" in stderr
    assert not out.exists() and not _new_tiny_folders(before)
    rerun = subprocess.run(_cli(folder, out, None), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {lines} (already in the journal)" in rerun.stderr
    assert len(journal_lines(journal)) == 64 and not _new_tiny_folders(before)


# ----------------------------------------------------------------------------- bad commands


def _bad_cases(tmp: Path, folder: Path) -> dict[str, list]:
    empty = tmp / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    a_file = tmp / "a-file"
    a_file.write_text("x")
    out = ["--out", tmp / "labels.json"]
    return {
        "missing folder": [tmp / "nowhere", *DETECT, *out],
        "empty folder": [empty, *DETECT, *out],
        "detect without phrases": [folder, "--task", "detect", *out],
        "ground without phrases": [folder, "--task", "ground", *out],
        "out under a file": [folder, *DETECT, "--out", a_file / "labels.json"],
        "out in a missing folder": [folder, *DETECT, "--out", tmp / "missing" / "labels.json"],
        "out is a folder": [folder, *DETECT, "--out", empty],
        "unknown format": [folder, *DETECT, "--format", "voc", *out],
        "generation flag for detect": [folder, *DETECT, "--max-new-tokens", "5", *out],
        "detection flag for ground": [folder, "--task", "ground", "--phrases", "a", "--threshold", "0.5", *out],
        "threshold out of range": [folder, *DETECT[:-4], "--threshold", "2", *out],
        "phrases for caption": [folder, "--task", "caption", "--phrases", "a dog", *out],
        "markup only phrase": [folder, "--task", "ground", "--phrases", "<phrase>", *out],
        "tiny and a checkpoint": [folder, *DETECT, "--tiny", "--checkpoint", tmp / "ckpt", *out],
        "workers without ray": [folder, *DETECT, "--workers", "2", *out],
    }


CASES = [
    "missing folder", "empty folder", "detect without phrases", "ground without phrases", "out under a file",
    "out in a missing folder", "out is a folder", "unknown format", "generation flag for detect",
    "detection flag for ground", "threshold out of range", "phrases for caption", "markup only phrase",
    "tiny and a checkpoint", "workers without ray"]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_command_is_one_line_exit_2_and_writes_nothing(case, folder, tmp_path, capsys):
    args = _bad_cases(tmp_path, folder)[case]
    before = sorted(tmp_path.rglob("*")), sorted(folder.rglob("*"))
    assert label(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert (sorted(tmp_path.rglob("*")), sorted(folder.rglob("*"))) == before


def test_a_journal_of_another_command_is_refused(folder, tmp_path, capsys):
    journal = tmp_path / "labels.jsonl"
    with labels.JournalWriter(journal, {"task": "ground"}):
        pass
    journal.write_text('{"file": "img00.jpg", "failed": "x"}\n')
    before = journal.read_bytes()
    assert label(folder, *DETECT, "--out", tmp_path / "labels.json", "--tiny") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "different command" in err and err.count("\n") == 1
    assert journal.read_bytes() == before and not (tmp_path / "labels.json").exists()


def test_offline_without_tiny_is_an_error_at_once_and_loads_no_random_weights(folder, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    env.pop("KOSMOS2_CHECKPOINT", None)
    out = tmp_path / "out" / "labels.json"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "kosmos2", "label", str(folder), *DETECT, "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("error: Could not get 'microsoft/kosmos-2-patch14-224'") and last.endswith(
        "label never falls back to random weights (--tiny labels with the tiny random checkpoint, --checkpoint DIR "
        "with a local copy)"), proc.stderr
    assert "tiny checkpoint" not in proc.stderr.replace(last, "") and "Model ready" not in proc.stderr, proc.stderr
    assert list(out.parent.iterdir()) == []


def test_ray_missing_is_one_line(folder, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from kosmos2.cli.label import main; "
            f"sys.exit(main({[str(folder), *DETECT, '--engine', 'ray', '--out', str(tmp_path / 'l.json')]!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "error: --engine ray needs Ray: pip install -r requirements-ray.txt\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case, message", [
    ("generation flag for detect", "error: --max-new-tokens does not apply to --task detect\n"),
    ("detection flag for ground", "error: --threshold does not apply to --task ground\n"),
])
def test_a_setting_of_another_task_is_named(case, message, folder, tmp_path, capsys):
    assert label(*_bad_cases(tmp_path, folder)[case]) == 2
    assert capsys.readouterr().err == message
