"""Training examples: the four data formats read into prompt/answer pairs, bad records reported by file and line."""

import json

import pytest
from PIL import Image

from kosmos2.training.examples import DataError, Example, detect_format, read_examples

# Patch tokens worked out by hand (grid 32): first = floor(y1*32)*32 + floor(x1*32),
# second = ceil(y2*32-1)*32 + ceil(x2*32-1).
TOP_LEFT = "<patch_index_0000><patch_index_0495>"  # (0, 0, .5, .5): 0*32+0; 15*32+15
BOTTOM_RIGHT = "<patch_index_0528><patch_index_1023>"  # (.5, .5, 1, 1): 16*32+16; 31*32+31
BOTTOM_LEFT = "<patch_index_0512><patch_index_1007>"  # (0, .5, .5, 1): 16*32+0; 31*32+15
CENTRE = "<patch_index_0264><patch_index_0759>"  # (.25, .25, .75, .75): 8*32+8; 23*32+23
DELIM = "</delimiter_of_multi_objects/>"


def png(folder, name, size=(64, 64)):
    Image.new("RGB", size, "white").save(folder / name)


def lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def journal(tmp_path, task, rows, phrases=()):
    path = lines(tmp_path / "labels.jsonl", rows)
    (tmp_path / "labels.jsonl.run.json").write_text(json.dumps({"task": task, "phrases": list(phrases)}))
    return path


def problems_by_where(problems):
    return {p.where: p.reason for p in problems}


def test_journal_caption_puts_the_leading_space_inside_the_phrase(tmp_path):
    png(tmp_path, "a.png")
    # "An image of a snowman.": span [12, 21] is "a snowman"; the space at 11 moves inside <phrase>.
    entity = {"phrase": "a snowman", "row": None, "span": [12, 21], "boxes": [[0.25, 0.25, 0.75, 0.75]]}
    path = journal(tmp_path, "caption", [{"file": "a.png", "caption": "An image of a snowman.", "entities": [entity]}])
    assert detect_format(path) == "journal"
    examples, problems = read_examples(path, tmp_path)
    assert problems == []
    assert examples == [
        Example(
            tmp_path / "a.png",
            "<grounding> An image of",
            f"<phrase> a snowman</phrase><object>{CENTRE}</object>.",
            f"{path}:1",
        )
    ]


@pytest.mark.parametrize("task", ["ground", "detect"])
def test_journal_ground_gives_one_example_per_phrase(tmp_path, task):
    png(tmp_path, "a.png")
    entities = [
        {"phrase": "a hat", "row": 1, "boxes": [[0.5, 0.5, 1.0, 1.0]]},
        {"phrase": "a snowman", "row": 0, "boxes": [[0.0, 0.0, 0.5, 0.5]]},
        {"phrase": "a snowman", "row": 0, "boxes": [[0.0, 0.5, 0.5, 1.0]]},
    ]
    path = journal(tmp_path, task, [{"file": "a.png", "entities": entities}], phrases=["a snowman", "a hat"])
    examples, problems = read_examples(path, tmp_path, fmt="journal")
    assert problems == []
    assert [(e.prompt, e.answer, e.where) for e in examples] == [
        ("<grounding><phrase> a snowman</phrase>", f"<object>{TOP_LEFT}{DELIM}{BOTTOM_LEFT}</object>", f"{path}:1"),
        ("<grounding><phrase> a hat</phrase>", f"<object>{BOTTOM_RIGHT}</object>", f"{path}:1"),
    ]


def test_journal_bad_records_become_problems_and_good_ones_are_kept(tmp_path):
    png(tmp_path, "a.png")
    png(tmp_path, "b.png")
    good = {"file": "a.png", "entities": [{"row": 0, "boxes": [[0.0, 0.0, 0.5, 0.5]]}]}
    rows = [
        {"file": "b.png", "failed": "cannot open"},  # first record: still detected as a journal
        "{not json",
        {"file": "missing.png", "entities": []},
        {"file": "b.png", "entities": [{"row": 5, "boxes": [[0.0, 0.0, 0.5, 0.5]]}]},
        good,
    ]
    path = journal(tmp_path, "ground", rows, phrases=["a cat"])
    assert detect_format(path) == "journal"
    examples, problems = read_examples(path, tmp_path)
    assert [(e.prompt, e.answer, e.where) for e in examples] == [
        ("<grounding><phrase> a cat</phrase>", f"<object>{TOP_LEFT}</object>", f"{path}:5")
    ]
    reasons = problems_by_where(problems)
    assert sorted(reasons) == sorted(f"{path}:{n}" for n in (1, 2, 3, 4))
    assert "labelling failed: cannot open" in reasons[f"{path}:1"]
    assert "not JSON" in reasons[f"{path}:2"]
    assert "no such image" in reasons[f"{path}:3"] and "missing.png" in reasons[f"{path}:3"]
    assert "row 5" in reasons[f"{path}:4"]


def test_journal_needs_its_run_file(tmp_path):
    png(tmp_path, "a.png")
    path = lines(tmp_path / "labels.jsonl", [{"file": "a.png", "entities": []}])
    with pytest.raises(DataError, match=r"labels\.jsonl\.run\.json"):
        read_examples(path, tmp_path)


def test_coco_groups_boxes_by_image_and_category_in_file_order(tmp_path):
    png(tmp_path, "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}, {"id": 2, "file_name": "gone.png"}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "crowd"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [32, 32, 32, 32]},  # (.5, .5, 1, 1)
            {"id": 8, "image_id": 1, "category_id": 2, "bbox": [0, 32, 32, 32]},  # (0, .5, .5, 1)
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32]},  # (0, 0, .5, .5)
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [16, 16, 32, 32], "iscrowd": 1},
            {"id": 5, "image_id": 1, "category_id": 3, "bbox": [0, 0, 8, 8], "iscrowd": 1},
            {"id": 9, "image_id": 1, "category_id": 2, "bbox": [40, 40, 40, 40]},  # x2 = 80 > 64
            {"id": 10, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    assert detect_format(path) == "coco"
    examples, problems = read_examples(path, tmp_path)
    assert [(e.prompt, e.answer, e.where) for e in examples] == [
        (
            "<grounding><phrase> dog</phrase>",
            f"<object>{BOTTOM_RIGHT}{DELIM}{TOP_LEFT}</object>",
            f"{path}: annotation 7",
        )
    ]
    reasons = problems_by_where(problems)
    assert sorted(reasons) == [f"{path}: annotation 10", f"{path}: annotation 8"]
    assert "outside" in reasons[f"{path}: annotation 8"]
    assert "no such image" in reasons[f"{path}: annotation 10"]


def test_refexp_checks_boxes_against_the_displayed_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: stored 100x50, displayed 50x100
    Image.new("RGB", (100, 50)).save(tmp_path / "r.jpg", exif=exif)
    rows = [
        {"image": "r.jpg", "expression": "a dog", "box": [0, 50, 25, 100]},  # y2 = 100 fits only when displayed
        {"image": "r.jpg", "expression": "wide", "box": [0, 0, 100, 50]},  # fits only the stored frame
        {"image": "r.jpg", "expression": "inverted", "box": [40, 10, 10, 20]},
        {"image": "nope.jpg", "expression": "x", "box": [0, 0, 1, 1]},
        "[1, 2]",
    ]
    path = lines(tmp_path / "refs.jsonl", rows)
    assert detect_format(path) == "refexp"
    examples, problems = read_examples(path, tmp_path)
    # (0/50, 50/100, 25/50, 100/100) = (0, .5, .5, 1)
    assert examples == [
        Example(
            tmp_path / "r.jpg", "<grounding><phrase> a dog</phrase>", f"<object>{BOTTOM_LEFT}</object>", f"{path}:1"
        )
    ]
    reasons = problems_by_where(problems)
    assert sorted(reasons) == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "outside the 50x100 image" in reasons[f"{path}:2"]
    assert "inverted" in reasons[f"{path}:3"]
    assert "no such image" in reasons[f"{path}:4"]
    assert "not a JSON object" in reasons[f"{path}:5"]


def test_grounded_lines_with_bboxes_and_prompts(tmp_path):
    png(tmp_path, "g.png")
    text = "<grounding> A photo of<phrase> a cat</phrase> and<phrase> two dogs</phrase>."
    bboxes = [[0.0, 0.0, 0.5, 0.5], [[0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]]]
    answer = f"<phrase> a cat</phrase><object>{TOP_LEFT}</object> and<phrase> two dogs</phrase><object>"
    answer += f"{BOTTOM_RIGHT}{DELIM}{BOTTOM_LEFT}</object>."
    rows = [
        {"image": "g.png", "text": text, "bboxes": bboxes},
        {"image": "g.png", "text": text, "bboxes": bboxes, "prompt": "<grounding> A photo"},
        {"image": "g.png", "text": text, "bboxes": bboxes, "prompt": "<grounding> A picture"},
        {"image": "g.png", "text": text, "bboxes": [[0.0, 0.0, 0.5, 0.5]]},  # one entry for two phrases
        {"image": "none.png", "text": text},
    ]
    path = lines(tmp_path / "grounded.jsonl", rows)
    assert detect_format(path) == "grounded"
    examples, problems = read_examples(path, tmp_path)
    assert [(e.prompt, e.answer, e.where) for e in examples] == [
        ("<grounding> A photo of", answer, f"{path}:1"),
        ("<grounding> A photo", " of" + answer, f"{path}:2"),
    ]
    reasons = problems_by_where(problems)
    assert sorted(reasons) == [f"{path}:{n}" for n in (3, 4, 5)]
    assert "prompt is not the start" in reasons[f"{path}:3"]
    assert "bboxes has 1 entries" in reasons[f"{path}:4"]
    assert "no such image" in reasons[f"{path}:5"]


def test_unknown_format_or_empty_file_is_a_data_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    other = lines(tmp_path / "other.jsonl", [{"picture": "a.png", "words": "hi"}])
    with pytest.raises(DataError, match="empty"):
        read_examples(empty, tmp_path)
    with pytest.raises(DataError, match="not a known data format"):
        detect_format(other)
    with pytest.raises(DataError, match="unknown data format"):
        read_examples(other, tmp_path, fmt="yaml")
    with pytest.raises(DataError, match="no such data file"):
        read_examples(tmp_path / "absent.jsonl", tmp_path)


def test_a_grounded_prompt_keeps_the_boxes_of_its_own_phrases(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "g.png")
    record = {
        "image": "g.png",
        "text": "<grounding><phrase> a cat</phrase> and<phrase> a dog</phrase>",
        "bboxes": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]],
        "prompt": "<grounding><phrase> a cat</phrase> and",
    }
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    examples, problems = read_examples(tmp_path / "d.jsonl", tmp_path)
    assert not problems
    # (0, 0, .5, .5): cells 0 and 15*32+15 = 495; (.5, .5, 1, 1): 16*32+16 = 528 and 1023
    assert examples[0].prompt == (
        "<grounding><phrase> a cat</phrase><object><patch_index_0000><patch_index_0495></object> and"
    )
    assert examples[0].answer == "<phrase> a dog</phrase><object><patch_index_0528><patch_index_1023></object>"


def test_a_box_with_no_area_inside_the_image_and_a_coco_size_that_is_not_the_files_are_problems(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "a.png")
    # [100, 10, 100.4, 20] lies within the half-pixel slack but is empty once clamped to the image
    (tmp_path / "r.jsonl").write_text(json.dumps({"image": "a.png", "expression": "x", "box": [100, 10, 100.4, 20]}) + "\n")
    examples, problems = read_examples(tmp_path / "r.jsonl", tmp_path)
    assert not examples and "no area inside the 100x50 image" in str(problems[0])
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 100}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    examples, problems = read_examples(tmp_path / "c.json", tmp_path)
    assert not examples and str(problems[0]).endswith("is 50x100 in the file but " + str(tmp_path / "a.png") + " is 100x50 as shown (EXIF orientation applied)")


def test_box_hits_count_the_answers_entities_only():
    from kosmos2.training import box_hits

    cat = "<phrase> a cat</phrase><object><patch_index_0000><patch_index_0495></object>"  # (0, 0, .5, .5)
    dog = "<phrase> a dog</phrase><object><patch_index_0528><patch_index_1023></object>"  # (.5, .5, 1, 1)
    far = "<phrase> a dog</phrase><object><patch_index_0000><patch_index_0033></object>"  # (0, 0, 1/16, 1/16)
    target = f"<grounding>{cat} and{dog}"
    assert box_hits(target, target) == (2, 2)
    assert box_hits(target, target, prompt=f"<grounding>{cat} and") == (1, 1)
    assert box_hits(target, f"<grounding>{cat} and{far}") == (1, 2)  # IoU 1/64 < 0.5
