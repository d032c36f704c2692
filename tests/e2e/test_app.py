"""The Gradio app served on a local port with the tiny checkpoint, driven with ``gradio_client``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from launch import ROOT

CAT = ROOT / "assets" / "cat.jpg"  # 451 x 300
FAST = {"max_new_tokens": 4}


def test_import_loads_no_model():
    code = ("import sys, app, gradio; assert isinstance(app.demo, gradio.Blocks); "
            "assert 'kosmos2.model' not in sys.modules and 'kosmos2.generation' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def _check(result, size=(451, 300)):
    caption, entities, png = result
    assert isinstance(caption, str) and isinstance(entities, list)
    annotated = Image.open(png)
    assert annotated.format == "PNG" and annotated.size == size
    width, height = size
    for e in entities:
        assert set(e) >= {"phrase", "span", "boxes", "pixel_boxes", "colour"}
        start, end = e["span"]
        assert caption[start:end] == e["phrase"]
        for (x1, y1, x2, y2), pixel in zip(e["boxes"], e["pixel_boxes"]):
            assert pixel == [round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)]
    return caption, entities, annotated.convert("RGB")


def _edge_colour(annotated: Image.Image, pixel_box) -> tuple[int, int, int]:
    """The colour on the left edge of a box, half-way down."""
    x1, y1, _, y2 = pixel_box
    return annotated.getpixel((min(x1 + 1, annotated.width - 1), (y1 + y2) // 2))


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_api_lists_every_task(client):
    from kosmos2.demo.tasks import TASKS

    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {f"/{t}" for t in TASKS}


@pytest.mark.parametrize("task", ["caption", "detailed", "plain"])
def test_caption_endpoints(client, task):
    caption, _, _ = _check(client.predict(handle_file(str(CAT)), **FAST, api_name=f"/{task}"))
    assert caption.startswith({"caption": "An image of", "detailed": "Describe this image in detail:",
                               "plain": "An image of"}[task])


def test_ground_endpoint_runs_phrases_as_one_batch(client):
    caption, _, _ = _check(client.predict(handle_file(str(CAT)), "a cat\nthe left eye", **FAST, api_name="/ground"))
    lines = caption.split("\n")
    assert len(lines) == 2 and lines[0].startswith("a cat") and lines[1].startswith("the left eye")


def test_refer_endpoint_entities_match_the_annotated_image(client):
    boxes = [[40, 30, 200, 150], [300, 120, 440, 290]]
    caption, entities, annotated = _check(client.predict(handle_file(str(CAT)), boxes, **FAST, api_name="/refer"))
    assert caption.split("\n")[0].startswith("It is") and caption.split("\n")[1].startswith("It is")
    its = [e for e in entities if e["phrase"] == "It"]
    assert len(its) == 2 and its[0]["colour"] != its[1]["colour"]
    for e, (x1, y1, x2, y2) in zip(its, boxes):
        px1, py1, px2, py2 = e["pixel_boxes"][0]  # the drawn box, within one 32x32 cell (~14x9 px)
        assert abs(px1 - x1) <= 15 and abs(px2 - x2) <= 15 and abs(py1 - y1) <= 10 and abs(py2 - y2) <= 10
        assert _edge_colour(annotated, e["pixel_boxes"][0]) == _rgb(e["colour"])


def test_ask_endpoint_with_and_without_a_box(client):
    caption, _, _ = _check(client.predict(handle_file(str(CAT)), "What is this?", **FAST, api_name="/ask"))
    assert caption.startswith("Question: What is this? Answer:")
    caption, entities, annotated = _check(client.predict(handle_file(str(CAT)), "What is [this animal] doing?",
                                                         [[100, 50, 350, 280]], **FAST, api_name="/ask"))
    assert caption.startswith("Question: What is this animal doing? Answer:")
    (first, *_) = entities
    assert first["phrase"] == "this animal"
    assert _edge_colour(annotated, first["pixel_boxes"][0]) == _rgb(first["colour"])


def test_prompt_endpoint(client):
    caption, _, _ = _check(client.predict(handle_file(str(CAT)), "A <phrase>photo</phrase> of", **FAST,
                                          api_name="/prompt"))
    assert caption.startswith("A photo of")


@pytest.mark.parametrize("kwargs, message", [
    ({"api_name": "/caption"}, "No image"),
    ({"question": "x" * 1001, "api_name": "/ask"}, "too long"),
    ({"boxes": [[0, 0, 10, 10]] * 9, "api_name": "/refer"}, "Too many boxes"),
    ({"boxes": [[5, 5, 5, 50]], "api_name": "/refer"}, "empty"),
    ({"max_new_tokens": 100000, "api_name": "/caption"}, "between 1 and 512"),
    ({"decoding": "magic", "api_name": "/caption"}, "Decoding"),
])
def test_bad_input_gives_a_clear_error_and_the_app_keeps_serving(client, kwargs, message):
    image = None if message == "No image" else handle_file(str(CAT))
    with pytest.raises(AppError, match=message) as info:
        client.predict(image=image, **kwargs)
    assert "Traceback" not in str(info.value) and "/" not in str(info.value)
    _check(client.predict(handle_file(str(CAT)), **FAST, api_name="/caption"))


def test_unreadable_and_enormous_images(client, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(AppError, match="Could not read the image: it is not a supported image file"):
        client.predict(handle_file(str(bad)), **FAST, api_name="/caption")
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)  # 48 megapixels in a few kB
    with pytest.raises(AppError, match="too large"):
        client.predict(handle_file(str(huge)), **FAST, api_name="/caption")
    _check(client.predict(handle_file(str(CAT)), **FAST, api_name="/caption"))


def test_ui_handler_streams_partial_views_then_the_png(monkeypatch):
    from kosmos2.demo import loading
    from kosmos2.ui import runner as ui_runner
    from kosmos2.ui.runner import Submission

    monkeypatch.setattr(ui_runner, "STREAM_INTERVAL_S", 0.0)
    runner = ui_runner.Runner(loading.ModelHolder(force_tiny=True))
    settings = {"max_new_tokens": 12}
    *partials, final = runner.ui(Submission("refer", str(CAT), None, [[40, 30, 200, 150]], True, settings))
    assert len(partials) >= 2
    for page, timing, raw, entities, png, _ in partials:
        assert "generating…" in page and "k2-caption" in page and timing.startswith("generating")
        assert png == {"__type__": "update"}  # the PNG comes with the final result only
    page, timing, raw, entities, png, _ = final
    assert "generating…" not in page and "new tokens in" in timing
    assert raw.startswith("<grounding><phrase> It</phrase><object>") and entities[0]["phrase"] == "It"
    assert Image.open(png).size == (451, 300)
