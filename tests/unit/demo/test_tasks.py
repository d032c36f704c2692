"""Demo tasks without a UI: prompts (against SPEC.md's official prompts), markup neutralisation,
input validation, colours, drawing, and the CLI on the tiny checkpoint."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from kosmos2.demo import draw, inputs, loading, tasks
from kosmos2.demo import results as demo_results
from kosmos2.demo.generate import generate_each, stream_generation
from kosmos2.demo import settings as demo_settings
from kosmos2.demo.inputs import InputError
from kosmos2.demo.tasks import build_request
from kosmos2.hub import CheckpointError
from launch import ROOT

# On a 64x64 image these pixel boxes are SPEC.md's example boxes: patch pairs (44, 863) and (5, 911).
SNOWMAN_BOX = (25, 3, 63, 53)  # (0.390625, 0.046875, 0.984375, 0.828125)
FIRE_BOX = (11, 1, 31, 57)  # (0.171875, 0.015625, 0.484375, 0.890625)


@pytest.fixture
def image() -> Image.Image:
    return Image.new("RGB", (64, 64), (120, 140, 160))


# ----------------------------------------------------------------------------- prompts


def test_official_prompts(image):
    """The prompts are exactly the model card's (SPEC.md, "Prompts of the official tasks")."""
    assert build_request("caption", image).prompts == ("<grounding> An image of",)
    assert build_request("detailed", image).prompts == ("<grounding> Describe this image in detail:",)
    assert build_request("plain", image).prompts == ("An image of",)
    assert build_request("ground", image, "a snowman").prompts == ("<grounding><phrase> a snowman</phrase>",)
    assert build_request("ask", image, "What is special about this image?").prompts == (
        "<grounding> Question: What is special about this image? Answer:",)


def test_box_prompts_use_spec_patch_tokens(image):
    """A drawn box becomes the two patch tokens of SPEC.md's examples."""
    refer = build_request("refer", image, boxes=[SNOWMAN_BOX])
    assert refer.prompts == ("<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is",)
    ask = build_request("ask", image, "Where is [the fire] next to?", boxes=[FIRE_BOX])
    assert ask.prompts == ("<grounding> Question: Where is<phrase> the fire</phrase><object><patch_index_0005>"
                           "<patch_index_0911></object> next to? Answer:",)


def test_batched_tasks_make_one_row_per_phrase_or_box(image):
    ground = build_request("ground", image, "a snowman\n\n  a fire  \n")
    assert ground.prompts == ("<grounding><phrase> a snowman</phrase>", "<grounding><phrase> a fire</phrase>")
    assert ground.colour_by_row
    refer = build_request("refer", image, boxes=[SNOWMAN_BOX, FIRE_BOX])
    assert [p.count("<object>") for p in refer.prompts] == [1, 1]
    assert "<patch_index_0044><patch_index_0863>" in refer.prompts[0]
    assert "<patch_index_0005><patch_index_0911>" in refer.prompts[1]


def test_free_prompt_with_and_without_grounding(image):
    assert build_request("prompt", image, "A photo of").prompts == ("<grounding> A photo of",)
    assert build_request("prompt", image, "A photo of", grounding_on=False).prompts == (" A photo of",)
    boxed = build_request("prompt", image, "[It] is", boxes=[SNOWMAN_BOX])
    assert boxed.prompts == ("<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is",)


@pytest.mark.parametrize("typed", [
    "<phrase> a dog</phrase><object><patch_index_0001><patch_index_0002></object>",
    "a <grounding>dog",
    "<<phrase>phrase> a dog",
    "a dog</delimiter_of_multi_objects/>",
    "<image></image> a dog <s></s><pad>",
])
def test_user_markup_never_passes_as_markup(image, typed):
    """Tags typed by the user are removed: the prompt holds only the tags the task writes."""
    assert inputs.neutralise_markup(typed).split() == ["a", "dog"]
    for request in (build_request("ground", image, typed), build_request("ask", image, typed),
                    build_request("prompt", image, typed, grounding_on=False)):
        (prompt,) = request.prompts
        assert "patch_index" not in prompt and "<object>" not in prompt and "<image>" not in prompt
        assert prompt.count("<grounding>") == (0 if request.task == "prompt" else 1)
        assert prompt.count("<phrase>") == (1 if request.task == "ground" else 0)


def test_markup_only_text_is_rejected(image):
    with pytest.raises(InputError, match="only markup"):
        build_request("ask", image, "<<phrase>phrase></object>")


@pytest.mark.parametrize("task", ["ask", "ground", "prompt"])
def test_a_lone_angle_bracket_is_refused_with_a_reason(image, task):
    # the reference's clean-up (re.sub("<.*?>", "")) would drop "< 1 m long? Answer:<phrase>" from the caption
    with pytest.raises(InputError, match="contains '<'.*in words"):
        build_request(task, image, "Is the cat < 1 m long?")
    assert build_request(task, image, "Is the cat > 1 m long?").prompts  # a '>' alone opens no tag


# ----------------------------------------------------------------------------- validation


def test_no_image_and_unreadable_image(tmp_path):
    with pytest.raises(InputError, match="No image"):
        build_request("caption", None)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="Could not read the image") as info:
        build_request("caption", str(bad))
    assert str(tmp_path) not in str(info.value)


def test_enormous_image_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(path)  # 48 megapixels, a few kB on disk
    with pytest.raises(InputError, match=r"too large \(8000×6000"):
        build_request("caption", str(path))


def test_alpha_is_composited_onto_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert inputs.load_image(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_text_validation_messages(image):
    with pytest.raises(InputError, match="empty"):
        build_request("ask", image, "   ")
    with pytest.raises(InputError, match="too long \\(1001 characters\\); the limit is 1000"):
        build_request("prompt", image, "a" * 1001)
    with pytest.raises(InputError, match="Too many phrases"):
        build_request("ground", image, "\n".join(f"thing {i}" for i in range(inputs.MAX_PHRASES + 1)))
    with pytest.raises(InputError, match="Phrases are empty"):
        build_request("ground", image, "\n \n")


def test_box_validation(image):
    # inverted corners are put in order, parts outside the image are clipped
    assert inputs.validate_boxes([(50, 60, 10, 20)], 64, 64) == [(10, 20, 50, 60)]
    assert inputs.validate_boxes([(-10, -5, 100, 30)], 64, 64) == [(0, 0, 64, 30)]
    with pytest.raises(InputError, match="Box 1 is empty"):
        inputs.validate_boxes([(5, 5, 5, 30)], 64, 64)
    with pytest.raises(InputError, match="Box 2 is empty"):
        inputs.validate_boxes([(0, 0, 9, 9), (70, 70, 90, 90)], 64, 64)  # entirely outside
    with pytest.raises(InputError, match="Too many boxes \\(9\\); the limit is 8"):
        build_request("refer", image, boxes=[(0, 0, 9, 9)] * 9)
    with pytest.raises(InputError, match="No box"):
        build_request("refer", image)
    with pytest.raises(InputError, match="not four"):
        inputs.parse_boxes("1,2,3")
    # the image annotator's dicts and the CLI/API string form
    assert inputs.parse_boxes([{"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4, "label": ""}]) == [(1, 2, 3, 4)]
    assert inputs.parse_boxes("1,2,3,4; 5 6 7 8") == [(1, 2, 3, 4), (5, 6, 7, 8)]


def test_boxes_must_match_bracketed_phrases(image):
    with pytest.raises(InputError, match="1 box\\(es\\) but marked 0 phrase"):
        build_request("ask", image, "What is this?", boxes=[FIRE_BOX])
    with pytest.raises(InputError, match="takes no boxes"):
        build_request("caption", image, boxes=[FIRE_BOX])


def test_generation_settings_are_validated():
    s = demo_settings.GenerationSettings.from_user(max_new_tokens=20.0, decoding="sample", temperature="0.5")
    assert s.generate_kwargs() == {"max_new_tokens": 20, "num_beams": 1, "do_sample": True, "temperature": 0.5,
                                   "top_p": 0.9}
    assert demo_settings.GenerationSettings.from_user(decoding="beam", num_beams=4).generate_kwargs()["num_beams"] == 4
    for bad, match in [({"max_new_tokens": 513}, "between 1 and 512"), ({"max_new_tokens": 0}, "between"),
                       ({"max_new_tokens": 2.5}, "whole number"), ({"temperature": float("nan")}, "Temperature"),
                       ({"top_p": "x"}, "must be a number"), ({"decoding": "magic"}, "Decoding"),
                       ({"num_beams": 100}, "beams"), ({"no_repeat_ngram_size": -1}, "n-gram")]:
        with pytest.raises(InputError, match=match):
            demo_settings.GenerationSettings.from_user(**bad)


# ----------------------------------------------------------------------------- colours and drawing


def _distance(a: str, b: str) -> float:
    return sum((x - y) ** 2 for x, y in zip(draw.hex_to_rgb(a), draw.hex_to_rgb(b))) ** 0.5


def test_colours_distinct_for_any_number():
    colours = draw.entity_colours(40)
    assert len(set(colours)) == 40
    for a, b in itertools.pairwise(colours):  # neighbours are far apart in RGB
        assert _distance(a, b) > 100, (a, b)


def test_label_text_contrasts_with_its_background():
    assert draw.text_colour_on("#ffe119") == "#000000"  # yellow
    assert draw.text_colour_on("#800000") == "#ffffff"  # maroon


@pytest.mark.parametrize("background", [(250, 250, 250), (5, 5, 5)])
@pytest.mark.parametrize("box", [(0, 0, 12, 12), (88, 50, 100, 60), (40, 20, 60, 40)])
def test_labels_are_drawn_inside_the_image(background, box):
    """The label's filled background is fully drawn (PIL clips anything outside the image), in
    every corner, on light and dark images."""
    colour = "#4363d8"
    image = Image.new("RGB", (100, 60), background)
    boxes_only = draw.annotate(image, [draw.Annotation("", colour, [box])])
    labelled = draw.annotate(image, [draw.Annotation("a label", colour, [box])])
    rgb = draw.hex_to_rgb(colour)

    def count(img: Image.Image) -> int:
        return int((np.asarray(img) == rgb).all(axis=-1).sum())

    font = draw.ImageFont.load_default(size=10)  # the size annotate uses on a 100x60 image
    left, top, right, bottom = font.getbbox("a label")
    assert count(labelled) - count(boxes_only) >= 0.6 * (right - left) * (bottom - top)


def test_long_labels_are_shortened_to_fit():
    image = Image.new("RGB", (60, 40), "white")
    out = draw.annotate(image, [draw.Annotation("a very long label that cannot fit in sixty pixels", "#e6194b",
                                                [(30, 10, 59, 39)])])
    assert out.size == image.size
    per_row = (np.asarray(out) == (230, 25, 75)).all(axis=-1).sum(axis=1)
    assert per_row.max() > 45  # the shortened label's background spans almost the whole width


def test_labels_take_a_free_corner_of_their_box():
    """Hand-placed: a label goes above its box's top-left corner unless that covers a label placed before
    (smaller boxes first) or hides another box, and then to the next free corner."""
    assert draw.place_labels([(10, 50, 100, 100)], [(50, 20)], 300, 300) == [(10, 30)]  # above
    assert draw.place_labels([(10, 5, 100, 100)], [(50, 20)], 300, 300) == [(10, 5)]  # no room above: inside
    # same top-left corner: the small box keeps the place above it, the big one's label goes above its right end
    assert draw.place_labels([(10, 50, 200, 200), (10, 50, 60, 90)], [(80, 20), (80, 20)], 300, 300) == [
        (120, 30), (10, 30)]
    # a small box just above a big one: the big box's label goes inside it rather than over the small box
    assert draw.place_labels([(0, 40, 300, 300), (0, 10, 40, 38)], [(100, 20), (30, 20)], 300, 300) == [
        (0, 40), (0, 10)]


def test_labels_of_boxes_at_one_corner_are_all_readable():
    """Two boxes sharing a corner: both labels' backgrounds are drawn in full on the PNG (before, the
    second covered the first), and the page's overlay puts no label over another."""
    from kosmos2.demo import view

    image = Image.new("RGB", (200, 200), "white")
    colours, labels, boxes = ("#e6194b", "#3cb44b"), ("a big cup", "a spoon"), ((20, 60, 190, 190), (20, 60, 70, 100))

    def pixels(with_labels: bool) -> np.ndarray:
        drawn = draw.annotate(image, [draw.Annotation(label if with_labels else "", colour, [box])
                                      for label, colour, box in zip(labels, colours, boxes)])
        return np.asarray(drawn)

    labelled, boxes_only = pixels(True), pixels(False)
    font = draw.ImageFont.load_default(size=10)  # the size annotate uses on a 200x200 image (padding 2)
    for colour, label in zip(colours, labels):
        left, top, right, bottom = font.getbbox(label)
        added = [int((img == draw.hex_to_rgb(colour)).all(axis=-1).sum()) for img in (labelled, boxes_only)]
        # its background less the glyphs (drawn in white or black)
        assert added[0] - added[1] >= 0.5 * (right - left + 4) * (bottom - top + 4), (label, added)

    request = build_request("ground", Image.new("RGB", (320, 320)), "a big cup\na spoon", [])
    rows = ["<grounding><phrase> a big cup</phrase><object><patch_index_0066><patch_index_1023></object>",
            "<grounding><phrase> a spoon</phrase><object><patch_index_0066><patch_index_0330></object>"]
    page = view.render("data:,", demo_results.build_result(request, rows, done=True))
    found = re.findall(r'<g class="k2-label"[^>]*><rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" '
                       r'height="([\d.]+)"', page)
    (x1, y1, w1, h1), (x2, y2, w2, h2) = [tuple(map(float, f)) for f in found]
    assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, found


def test_png_tempfiles_are_fresh(tmp_path):
    image = Image.new("RGB", (8, 8))
    from kosmos2.ui.outputs import save_png_tempfile

    a, b = save_png_tempfile(image), save_png_tempfile(image)
    try:
        assert a != b and Image.open(a).format == "PNG"
    finally:
        Path(a).unlink()
        Path(b).unlink()


# ----------------------------------------------------------------------------- CLI


def test_cli_on_tiny_checkpoint(tmp_path):
    out = tmp_path / "annotated.png"
    proc = subprocess.run(
        [sys.executable, "-m", "kosmos2", str(ROOT / "assets" / "cat.jpg"), "--task", "refer", "--box", "40,30,200,150",
         "--tiny", "--max-new-tokens", "6", "--json", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "random" in proc.stderr
    # The prompt's own phrase comes back as the first entity, with the drawn box (one 32x32 cell
    # of the 451x300 image is ~14x9 pixels, so the round trip is within a cell).
    first = result["entities"][0]
    assert first["phrase"] == "It" and result["caption"].startswith("It is")
    x1, y1, x2, y2 = first["pixel_boxes"][0]
    assert abs(x1 - 40) <= 15 and abs(y1 - 30) <= 10 and abs(x2 - 200) <= 15 and abs(y2 - 150) <= 10
    annotated = Image.open(out)
    assert annotated.size == (451, 300)
    assert annotated.getpixel((round(x1) + 1, round((y1 + y2) / 2))) == draw.hex_to_rgb(first["colour"])


def test_cli_reports_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kosmos2", str(ROOT / "assets" / "cat.jpg"), "--task", "refer",
                           "--tiny"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr == "error: --task refer needs a box: give --box x1,y1,x2,y2 (in pixels)\n"
    proc = subprocess.run([sys.executable, "-m", "kosmos2", str(ROOT / "assets" / "cat.jpg"), "--task", "caption",
                           "--threshold", "0.3", "--nms-iou", "0.4", "--tiny"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr == "error: --threshold, --nms-iou does not apply to --task caption\n"


# ----------------------------------------------------------------------------- results and streaming


def test_entities_appear_when_their_object_closes(image):
    """Partial texts: an object still open gives no entity; once closed, SPEC.md's snowman box."""

    request = build_request("caption", image)
    head = "<image>x</image><grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>"
    partial = demo_results.build_result(request, [head])
    assert partial.caption == "An image of a snowman" and partial.entities == []
    final = demo_results.build_result(request, [head + "<patch_index_0863></object> warming"],
                               done=True)
    (e,) = final.entities
    assert (e.phrase, e.span, e.boxes) == ("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)])
    assert e.pixel_boxes == [(25, 3, 63, 53)]  # x 64, y 64, rounded
    assert final.raw == "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>" \
                        "<patch_index_0863></object> warming"


def test_rows_are_merged_with_one_colour_per_row(image):

    request = build_request("ground", image, "a snowman\na fire")
    texts = ["</image><grounding><phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>",
             "</image><grounding><phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>"]
    result = demo_results.build_result(request, texts, done=True)
    assert result.caption == "a snowman\na fire"
    assert [(e.phrase, e.span) for e in result.entities] == [("a snowman", (0, 9)), ("a fire", (10, 16))]
    assert [e.colour for e in result.entities] == draw.entity_colours(2)


def test_runner_streams_then_finishes(tiny_checkpoint, image):
    loaded = loading.ModelHolder(str(tiny_checkpoint), device="cpu").get()
    assert not loaded.is_tiny  # a folder was given: no fallback
    settings = demo_settings.GenerationSettings.from_user(max_new_tokens=8)
    results = list(stream_generation(loaded, build_request("refer", image, boxes=[SNOWMAN_BOX]), settings, min_interval_s=0))
    *partials, final = results
    assert partials and not any(r.done for r in partials) and final.done
    assert [r.new_tokens for r in partials] == list(range(1, len(partials) + 1))
    assert final.raw.startswith("<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is")
    assert final.first_token_s is not None and final.seconds >= final.first_token_s


def test_each_row_is_decoded_and_parsed_once_per_new_token_and_not_at_all_without_partial_results(
        tiny_checkpoint, image, monkeypatch):
    from kosmos2.demo import generate
    from kosmos2.demo.execute import run_task

    loaded = loading.ModelHolder(str(tiny_checkpoint), device="cpu").get()
    parsed: list[str] = []
    real = generate.parse_row
    monkeypatch.setattr(generate, "parse_row", lambda text, *a: parsed.append(text) or real(text, *a))
    settings = demo_settings.GenerationSettings.from_user(max_new_tokens=8)
    request = build_request("ground", image, "a snowman\na fire")  # two rows
    *ticks, final = run_task(loaded, tasks.TASKS["ground"], request, settings, min_interval_s=0, partial=False)
    assert ticks and all(t is None for t in ticks) and final.done
    assert len(parsed) == 2  # the final result's two rows, once each
    parsed.clear()
    *partials, again = run_task(loaded, tasks.TASKS["ground"], request, settings, min_interval_s=0)
    assert again.raw == final.raw
    assert len(parsed) == len(set(parsed))  # a row that did not grow is not parsed again (the final result included)


def test_a_named_checkpoint_that_is_missing_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(CheckpointError, match="no-such-checkpoint"):
        loading.ModelHolder(str(tmp_path / "no-such-checkpoint"), device="cpu").get()


def test_rotated_image_boxes_are_in_the_rotated_frame():
    """The image annotator gives boxes on the image as the user rotated it (clockwise turns)."""
    image = Image.new("RGB", (40, 20), "black")
    image.putpixel((39, 0), (255, 0, 0))  # top-right corner
    request = build_request("refer", image, boxes=[(0, 0, 10, 10)], quarter_turns=1)
    assert request.image.size == (20, 40)
    assert request.image.getpixel((19, 39)) == (255, 0, 0)  # clockwise: top-right goes to bottom-right


# ----------------------------------------------------------------------------- HTML view


def test_view_links_phrases_and_boxes_and_escapes_text(image):
    from kosmos2.demo import view

    request = build_request("caption", image)
    text = ("</image><grounding> An &<phrase> a snowman</phrase><object><patch_index_0044>"
            "<patch_index_0863></object> by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911>"
            "</object> 1 <img src=x onerror=alert(1)")
    result = demo_results.build_result(request, [text], done=True)
    html = view.render(view.image_data_uri(image), result)
    assert result.caption.endswith("1 <img src=x onerror=alert(1)")
    assert "<img src=x" not in html and "1 &lt;img src=x" in html and "An &amp;" in html  # text is escaped
    for i, e in enumerate(result.entities):  # a phrase span and a box share each entity's data-e and colour
        assert f'<span class="k2-ph" data-e="{i}" tabindex="0" style="--c:{e.colour}">{e.phrase}</span>' in html
        assert f'data-e="{i}"' in html.split("<svg", 1)[1]
        assert f':has([data-e="{i}"]:is(:hover, :focus)) rect.k2-box[data-e="{i}"]' in html
    x1, y1, x2, y2 = result.entities[0].pixel_boxes[0]
    assert f'x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" height="{y2 - y1:.1f}"' in html
    assert 'viewBox="0 0 64 64"' in html and 'src="data:image/jpeg;base64,' in html


def test_closing_a_run_stops_generation(tiny_checkpoint, image, monkeypatch):
    loaded = loading.ModelHolder(str(tiny_checkpoint), device="cpu").get()
    engine = loaded.batcher.engine
    ended = {}
    run = engine.run

    def spy(*args, **kwargs):
        try:
            ended["ids"] = run(*args, **kwargs)
        except BaseException as e:
            ended["error"] = e
            raise
        return ended["ids"]

    monkeypatch.setattr(engine, "run", spy)
    settings = demo_settings.GenerationSettings.from_user(max_new_tokens=512)
    stream = stream_generation(loaded, build_request("caption", image), settings, min_interval_s=0)
    first = next(stream)
    assert not first.done and first.new_tokens == 1
    stream.close()  # what Gradio does when the browser goes away
    loaded.batcher.close()  # waits for the batch to end
    # the decoding loop was asked to stop (DecodeJob.stop) and ended early, without an error
    assert "error" not in ended and ended["ids"].sequences.shape[1] < 512


def test_concurrent_runs_share_a_batch_and_get_their_lone_results(tiny_checkpoint, image):
    import threading

    loaded = loading.ModelHolder(str(tiny_checkpoint), device="cpu").get()
    settings = demo_settings.GenerationSettings.from_user(max_new_tokens=6)
    requests = [build_request("caption", image), build_request("ground", image, "a snowman\na fire"),
                build_request("ask", image.rotate(90, expand=True), "What is this?")]
    alone = [generate_each(loaded, [r], settings)[0].raw for r in requests]
    batcher, wait_s = loaded.batcher, 120  # only a hang reaches the deadline, however loaded the machine
    before = len(batcher.batch_sizes)
    together: dict[int, str] = {}
    errors: list[BaseException] = []

    def user(i: int) -> None:
        try:
            together[i] = generate_each(loaded, [requests[i]], settings)[0].raw
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(requests))]
    with batcher.hold():  # the users' rows (1 + 2 + 1) wait, then go out as one batch
        for t in threads:
            t.start()
        assert batcher.wait_pending(4, timeout=wait_s), f"the users' 4 rows were not queued in {wait_s} s"
    for t in threads:
        t.join(timeout=wait_s)
        assert not t.is_alive(), f"a user was still waiting after {wait_s} s"
    assert errors == []
    assert [together[i] for i in range(len(requests))] == alone
    assert batcher.batch_sizes[before:] == [4]  # 1 + 2 + 1 rows


def test_tokens_per_second_counts_decoding_after_the_first_token(image):
    result = demo_results.TaskResult("caption", "", [], "", [], [], (1, 1), done=True, new_tokens=11, seconds=3.0,
                              first_token_s=1.0)
    assert result.tokens_per_s == 5.0  # 10 tokens in the 2 s after the first one
    assert result.timing_text() == "11 new tokens in 3.00 s · first token after 1.00 s · 5.0 tokens/s after the first"
    beams = demo_results.TaskResult("caption", "", [], "", [], [], (1, 1), done=True, new_tokens=12, seconds=3.0)
    assert beams.timing_text() == "12 new tokens in 3.00 s · 4.0 tokens/s"  # no first token's time: the whole run


@pytest.mark.parametrize("task, text, boxes, reference_text", [
    ("refer", None, [SNOWMAN_BOX], "<grounding><phrase> It</phrase> is"),
    ("ask", "Where is [the fire] next to?", [FIRE_BOX],
     "<grounding> Question: Where is<phrase> the fire</phrase> next to? Answer:"),
    ("prompt", "[A snowman] near [a fire].", [SNOWMAN_BOX, FIRE_BOX],
     "<grounding><phrase> A snowman</phrase> near<phrase> a fire</phrase>."),
])
def test_box_prompts_tokenize_like_the_reference_processor_with_bboxes(tiny_checkpoint, image, task, text, boxes,
                                                                        reference_text):
    """Our prompts carry the patch tokens inline; the reference processor inserts them from
    ``bboxes``: both give the same ids."""
    from reference import reference_processor

    from kosmos2 import AutoProcessor

    (prompt,) = build_request(task, image, text, boxes).prompts
    ours = AutoProcessor.from_pretrained(tiny_checkpoint)(text=prompt, images=image)["input_ids"]
    norm = [tuple(c / 64 for c in box) for box in boxes]
    ref = reference_processor(tiny_checkpoint)(text=reference_text, images=image, bboxes=norm)["input_ids"]
    assert list(ours) == list(ref)


def test_light_colours_are_darkened_for_text_on_white():
    assert draw.readable_on_white("#e6194b") == "#e6194b"  # red reads well already
    assert draw.readable_on_white("#ffe119") == "#8c7c0e"  # yellow x 0.55: (140.25, 123.75, 13.75) rounded


def test_region_descriptions_take_the_colours_the_boxes_were_drawn_with():
    drawn = [{"xmin": 10, "ymin": 10, "xmax": 100, "ymax": 80, "label": "", "color": (230, 25, 75)},
             {"xmin": 150, "ymin": 60, "xmax": 300, "ymax": 200, "label": "", "color": (60, 180, 75)}]
    request = tasks.build_request("refer", Image.new("RGB", (320, 240)), boxes=drawn)
    assert request.box_colours == ("#e6194b", "#3cb44b")  # hex of the drawn RGB triples
    texts = ["<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is red",
             "<grounding><phrase> It</phrase><object><patch_index_0005><patch_index_0911></object> is green"]
    result = demo_results.build_result(request, texts)
    assert [e.colour for e in result.entities] == ["#e6194b", "#3cb44b"]
    # Without colours on the boxes (API pixel lists) the palette is used, one colour per row.
    plain = tasks.build_request("refer", Image.new("RGB", (320, 240)), boxes=[[10, 10, 100, 80], [150, 60, 300, 200]])
    assert plain.box_colours == ()
    colours = [e.colour for e in demo_results.build_result(plain, texts).entities]
    assert colours == draw.entity_colours(2)


def test_the_page_shows_an_asked_questions_answer_alone_and_the_caption_keeps_the_question():
    from kosmos2.demo import view

    drawn = [{"xmin": 10, "ymin": 10, "xmax": 100, "ymax": 80, "label": "", "color": (230, 25, 75)}]
    request = build_request("ask", Image.new("RGB", (320, 240)), "What is [this] doing?", drawn)
    text = ("<grounding> Question: What is<phrase> this</phrase><object><patch_index_0044><patch_index_0863></object> "
            "doing? Answer: It is<phrase> sleeping</phrase><object><patch_index_0005><patch_index_0911></object>.")
    result = demo_results.build_result(request, [text], done=True)
    assert result.caption == "Question: What is this doing? Answer: It is sleeping."  # the API's caption
    page = view.render("data:,", result)
    shown = page.split('<div class="k2-caption">')[1]
    assert "Question" not in shown and "Answer" not in shown
    assert '>It is <span class="k2-ph" data-e="1"' in shown and ">sleeping</span>." in shown, shown
    assert page.count('<rect class="k2-box"') == 2  # the question's box is still drawn


def test_drawn_boxes_are_numbered_in_the_order_given_on_the_labels_and_in_the_text():
    from kosmos2.demo import view

    request = build_request("prompt", Image.new("RGB", (320, 240)), "[a cup] and [a spoon]",
                            [[10, 10, 100, 80], [150, 60, 300, 200]])
    text = ("<grounding><phrase> a cup</phrase><object><patch_index_0044><patch_index_0863></object> and<phrase> a "
            "spoon</phrase><object><patch_index_0005><patch_index_0911></object> on<phrase> a table</phrase><object>"
            "<patch_index_0000><patch_index_1023></object>")
    result = demo_results.build_result(request, [text], done=True)
    assert [a.label for a in result.annotations()] == ["Box 1 · a cup", "Box 2 · a spoon", "a table"]
    page = view.render("data:,", result)
    assert page.count('class="k2-boxno"') == 2 and ">Box 1</span> <span class=\"k2-ph\" data-e=\"0\"" in page, page
    assert result.entities_json()[0]["phrase"] == "a cup"  # the API's entities are unchanged


def test_tiff_orientation_is_applied_like_pillow_does(tmp_path):
    path = tmp_path / "rotated.tif"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    Image.new("RGB", (40, 20), (200, 30, 30)).save(path, exif=exif)
    with Image.open(path) as opened:
        want = ImageOps.exif_transpose(opened).size
    assert want == (20, 40)
    assert inputs.load_image(str(path)).size == want


def test_an_exif_block_pillow_cannot_parse_is_a_damaged_file_not_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16)).save(path)

    def unreadable(image):
        raise SyntaxError("not a TIFF file")  # what pillow's EXIF parser raises for a broken header

    monkeypatch.setattr(ImageOps, "exif_transpose", unreadable)
    with pytest.raises(InputError, match="damaged or truncated"):
        inputs.load_image(str(path))
