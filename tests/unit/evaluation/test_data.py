"""Evaluation files read into the protocols' items: our refexp lines, MDETR's RefCOCO and Flickr30k Entities JSON
(the layout MDETR's pre-processing writes), a caption journal and COCO; boxes in pixels of the image as shown, bad
records named."""

import json

import pytest
from PIL import Image

from kosmos2.evaluation import read_benchmark
from kosmos2.training import DataError

EXIF_ORIENTATION = 0x0112


def png(folder, name, size=(100, 50), orientation=None):
    image = Image.new("RGB", size, "white")
    if orientation is None:
        image.save(folder / name)
    else:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        image.save(folder / name, exif=exif.tobytes())


def write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_refexp_lines_give_comprehension_queries_and_name_bad_lines(tmp_path):
    png(tmp_path, "a.png")
    rows = [{"image": "a.png", "expression": "the red circle", "box": [10, 5, 60, 45]},
            {"image": "a.png", "expression": "the cat", "box": [10, 5, 160, 45]},
            {"image": "missing.png", "expression": "x", "box": [0, 0, 1, 1]}]  # fmt: skip
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    bench = read_benchmark(tmp_path / "r.jsonl", tmp_path)
    assert bench.fmt == "refexp"
    (q,) = bench.comprehension
    assert (q.phrase, q.truth, q.before) == ("the red circle", ((10.0, 5.0, 60.0, 45.0),), "")
    assert q.prompt == "<grounding><phrase> the red circle</phrase>"  # the protocol's prompt
    assert [p.where.rsplit(":", 1)[1] for p in bench.problems] == ["2", "3", "4"]
    assert "outside" in bench.problems[0].reason and "no such image" in bench.problems[1].reason


def test_mdetr_refcoco_entries_give_one_query_each_from_their_one_annotation(tmp_path):
    png(tmp_path, "COCO_1.jpg")
    data = {"images": [{"file_name": "COCO_1.jpg", "height": 50, "width": 100, "id": 0, "original_id": 7,
                        "caption": "man on the left", "dataset_name": "refcoco", "tokens_negative": [[0, 3]]},
                       {"file_name": "COCO_1.jpg", "height": 50, "width": 100, "id": 1, "original_id": 7,
                        "caption": "nothing here", "dataset_name": "refcoco", "tokens_negative": []}],
            "annotations": [{"area": 200, "iscrowd": 0, "image_id": 0, "category_id": 1, "id": 5,
                             "bbox": [10, 20, 20, 10], "tokens_positive": [[0, 3]]}],
            "categories": [{"id": 1, "name": "person"}]}  # fmt: skip
    bench = read_benchmark(write(tmp_path / "final_refcoco_testA.json", data), tmp_path)
    assert bench.fmt == "mdetr"
    (q,) = bench.comprehension
    assert (q.phrase, q.truth) == ("man on the left", ((10.0, 20.0, 30.0, 30.0),))  # xywh -> x1 y1 x2 y2
    assert len(bench.problems) == 1 and "exactly one annotation" in bench.problems[0].reason


def test_mdetr_flickr_phrases_take_the_caption_before_them_and_every_box_linked_to_them(tmp_path):
    png(tmp_path, "1.jpg")
    caption = "A man holds two dogs on a leash ."
    data = {"images": [{"file_name": "1.jpg", "height": "50", "width": "100", "id": 3, "caption": caption,
                        "dataset_name": "flickr", "sentence_id": 0, "original_img_id": 1,
                        "tokens_positive_eval": [[[0, 5]], [[12, 20]]]}],
            "annotations": [{"image_id": 3, "id": 1, "bbox": [0, 0, 10, 10], "tokens_positive": [[0, 5]]},
                            {"image_id": 3, "id": 2, "bbox": [20, 0, 10, 10], "tokens_positive": [[12, 20]]},
                            {"image_id": 3, "id": 3, "bbox": [40, 0, 10, 10],
                             "tokens_positive": [[16, 20]]}]}  # fmt: skip
    bench = read_benchmark(write(tmp_path / "flickr.json", data), tmp_path)
    first, second = bench.grounding
    assert (first.phrase, first.before, first.truth) == ("A man", "", ((0.0, 0.0, 10.0, 10.0),))
    assert (second.phrase, second.before) == ("two dogs", "A man holds ")
    assert second.truth == ((20.0, 0.0, 30.0, 10.0), (40.0, 0.0, 50.0, 10.0))
    assert second.prompt == "<grounding>A man holds<phrase> two dogs</phrase>"
    assert not bench.comprehension and not bench.problems


def test_a_caption_journal_gives_captions_and_grounding_queries_in_the_displayed_frame(tmp_path):
    png(tmp_path, "t.jpg", size=(50, 100), orientation=6)  # stored 50x100, shown 100x50
    (tmp_path / "labels.jsonl").write_text(json.dumps({"file": "t.jpg", "width": 100, "height": 50,
        "caption": "An image of a red circle.", "entities": [{"phrase": "a red circle", "span": [12, 24],
        "boxes": [[0.1, 0.2, 0.5, 0.6]]}]}) + "\n")  # fmt: skip
    write(tmp_path / "labels.jsonl.run.json", {"task": "caption", "phrases": []})
    bench = read_benchmark(tmp_path / "labels.jsonl", tmp_path)
    ((phrase, boxes),) = bench.captions[0].entities
    assert phrase == "a red circle" and boxes[0] == pytest.approx((10.0, 10.0, 50.0, 30.0))
    (q,) = bench.grounding
    assert q.before == "An image of " and q.prompt == "<grounding>An image of<phrase> a red circle</phrase>"


def test_a_coco_file_gives_its_images_and_categories_and_refuses_a_wrong_size(tmp_path):
    png(tmp_path, "a.png")
    png(tmp_path, "b.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
                       {"id": 2, "file_name": "b.png", "width": 50, "height": 100}],
            "annotations": [], "categories": [{"id": 3, "name": "a red circle"}]}  # fmt: skip
    bench = read_benchmark(write(tmp_path / "coco.json", data), tmp_path)
    assert bench.fmt == "coco" and bench.categories == {3: "a red circle"}
    assert [i.id for i in bench.coco_images] == [1]
    assert "50x100 in the file" in bench.problems[0].reason


def test_a_file_of_no_known_format_is_refused(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        read_benchmark(tmp_path / "none.json", tmp_path)
    (tmp_path / "g.jsonl").write_text(json.dumps({"image": "a.png", "text": "x"}) + "\n")
    with pytest.raises(DataError, match="eval reads"):
        read_benchmark(tmp_path / "g.jsonl", tmp_path)
