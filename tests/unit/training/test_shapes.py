"""The synthetic shapes data set: the same seed gives the same bytes, every recorded box is the tight box of
its shape's pixels in the upright image (read back through the EXIF orientation), pycocotools reads the COCO
file, every file trains without a problem, and the relations in referring expressions hold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kosmos2 import AutoProcessor
from kosmos2.image_processing import open_image, to_rgb
from kosmos2.training import Encoder, read_examples
from kosmos2.training.shapes import COLOURS, GAP, write_dataset
from launch import ROOT

COUNT = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes") / "set"
    write_dataset(folder, COUNT, seed=7, exif_share=0.3)
    return folder


def test_the_same_seed_gives_the_same_files_and_another_seed_others(dataset, tmp_path):
    write_dataset(tmp_path / "again", COUNT, seed=7, exif_share=0.3)
    write_dataset(tmp_path / "other", COUNT, seed=8, exif_share=0.3)
    names = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert all((dataset / n).read_bytes() == (tmp_path / "again" / n).read_bytes() for n in names)
    assert (dataset / "coco.json").read_bytes() != (tmp_path / "other" / "coco.json").read_bytes()


def test_every_box_is_the_tight_box_of_its_shapes_pixels_in_the_upright_image(dataset):
    coco = json.loads((dataset / "coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    turned = 0
    for image in coco["images"]:
        opened = open_image(dataset / image["file_name"])
        turned += opened.size != (image["width"], image["height"])
        pixels = np.asarray(to_rgb(opened, as_displayed=True))
        assert pixels.shape[:2] == (image["height"], image["width"])
        for a in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = a["bbox"]
            colour = COLOURS[names[a["category_id"]].split()[1]]
            # look a little beyond the box (shapes are GAP apart): the colour's pixels must fill exactly the box
            top, left = max(y - GAP // 2, 0), max(x - GAP // 2, 0)
            window = pixels[top : y + h + GAP // 2, left : x + w + GAP // 2]
            ys, xs = np.nonzero((window == colour).all(axis=2))
            assert (xs.min() + left, ys.min() + top, xs.max() + left + 1, ys.max() + top + 1) == (x, y, x + w, y + h)
    assert turned > 0  # some images are stored turned 90 degrees, with the orientation that turns them back


def test_pycocotools_reads_the_coco_file(dataset):
    from pycocotools.coco import COCO

    coco = COCO(str(dataset / "coco.json"))
    assert len(coco.getImgIds()) == COUNT and len(coco.getCatIds()) == 18
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert 1 <= min(per_image) and max(per_image) <= 4
    assert any(len(coco.getAnnIds(imgIds=[i], catIds=[c])) == 2 for i in coco.getImgIds() for c in coco.getCatIds())


def test_every_file_trains_without_a_problem(dataset, tiny_checkpoint):
    encoder = Encoder(AutoProcessor.from_pretrained(tiny_checkpoint), "answer")
    counts = {}
    for name in ("labels.jsonl", "coco.json", "refexp.jsonl", "grounded.jsonl"):
        examples, problems = read_examples(dataset / name, dataset)  # image paths are relative to the folder
        assert not problems, problems[:3]
        for e in examples:
            encoder.check(e)
        counts[name] = len(examples)
    assert counts["labels.jsonl"] == COUNT and counts["grounded.jsonl"] > 3 * COUNT
    texts = [json.loads(line)["text"] for line in (dataset / "grounded.jsonl").read_text().splitlines()]
    assert any("</delimiter_of_multi_objects/>" in t for t in texts)  # a phrase with two instances
    assert any(re.match(r"<grounding> Question: What colour is the (circle|square|triangle)\? Answer: \w+\.$", t) for t in texts)
    assert any(t.startswith("<grounding><phrase> It</phrase><object>") for t in texts)


def test_the_relations_of_referring_expressions_hold(dataset):
    coco = json.loads((dataset / "coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    boxes: dict[tuple[str, str], list[list[float]]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault((files[a["image_id"]], names[a["category_id"]]), []).append([x, y, x + w, y + h])
    checked = 0
    for line in (dataset / "refexp.jsonl").read_text().splitlines():
        r = json.loads(line)
        m = re.fullmatch(r"the (\w+) (left of|right of|above|below) the (\w+) (\w+)", r["expression"])
        if not m:
            continue
        anchor = boxes[(r["image"], f"a {m[3]} {m[4]}")]
        assert len(anchor) == 1  # the anchor is the only one of its phrase
        (ax1, ay1, ax2, ay2), (x1, y1, x2, y2) = anchor[0], r["box"]
        assert {"left of": x2 <= ax1, "right of": x1 >= ax2, "above": y2 <= ay1, "below": y1 >= ay2}[m[2]]
        checked += 1
    assert checked > 5


def test_the_command_writes_a_new_folder_only(tmp_path):
    def shapes(*args):
        return subprocess.run([sys.executable, "-m", "kosmos2", "shapes", *map(str, args)],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip

    done = shapes(tmp_path / "set", "--count", 3, "--seed", 1)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 scenes" in done.stderr and (tmp_path / "set" / "coco.json").is_file()
    again = shapes(tmp_path / "set", "--count", 3)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "not an empty folder" in again.stderr
    assert shapes(tmp_path / "none", "--count", 0).returncode == 2 and not (tmp_path / "none").exists()
