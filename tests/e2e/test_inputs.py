"""Every kind of input a public demo gets, sent to the app served on a local port (tiny checkpoint)
through ``gradio_client``: each gives a clear message or a correct result, and the next request works.

Images go to ``/plain`` with one new token: no entity can be complete, so the annotated PNG that
comes back is exactly the upright RGB image the model saw, and is compared with hand-derived pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageFile

from kosmos2.demo import inputs, loading
from images import png_bomb
from launch import ROOT, serve

CAT = ROOT / "assets" / "cat.jpg"  # 451 x 300
ONE_TOKEN = {"max_new_tokens": 1}
RED, GREEN, BLUE, WHITE, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (128, 128, 128)


@pytest.fixture(scope="module")
def holder():
    return loading.ModelHolder(force_tiny=True)


@pytest.fixture(scope="module")
def client(holder):
    with serve(holder) as url:
        yield Client(url, verbose=False)


@pytest.fixture
def decoder_inputs(holder, monkeypatch):
    """The ``input_ids`` of every call of the language decoder (every generation path runs it)."""
    decoder = holder.get().model.text_model.model
    original = decoder.forward
    seen: list[list[int]] = []

    def recording(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append([] if ids is None else ids[0].tolist())
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", recording)
    return seen


@pytest.fixture
def decoded_sizes(monkeypatch):
    """(width, height) of every image whose pixels pillow decodes, in any thread of this process."""
    sizes: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def recording(self):
        sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return sizes


def assert_clean_message(error: BaseException, *private: Path) -> None:
    """A message for people: no stack trace, no file-system path."""
    message = str(error)
    assert "Traceback" not in message and 'File "' not in message
    assert "/" not in message and "\\" not in message
    for path in private:
        assert str(path) not in message and path.name not in message


def next_request_works(client: Client) -> None:
    caption, _, png = client.predict(handle_file(str(CAT)), **ONE_TOKEN, api_name="/plain")
    assert caption.startswith("An image of") and Image.open(png).size == (451, 300)


def seen_image(client: Client, path: Path) -> Image.Image:
    """The image the model saw for the file at ``path`` (the annotated PNG, with nothing drawn on it)."""
    caption, entities, png = client.predict(handle_file(str(path)), **ONE_TOKEN, api_name="/plain")
    assert caption.startswith("An image of") and entities == []
    return Image.open(png).convert("RGB")


def close(pixel, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


# ----------------------------------------------------------------------------- image files


@pytest.mark.parametrize("pixels", [Image.MAX_IMAGE_PIXELS + 1_000_000, 2 * Image.MAX_IMAGE_PIXELS + 1_000_000],
                         ids=["over-pillow-limit", "over-twice-pillow-limit"])
def test_decompression_bomb_is_rejected_without_decoding(client, tmp_path, decoded_sizes, pixels):
    width = 20_000
    path = png_bomb(tmp_path / "bomb.png", width, pixels // width + 1)
    assert path.stat().st_size < 200_000
    with pytest.raises(AppError, match="too large") as info:
        client.predict(handle_file(str(path)), **ONE_TOKEN, api_name="/plain")
    assert_clean_message(info.value, tmp_path, path)
    assert all(w * h <= inputs.MAX_IMAGE_PIXELS for w, h in decoded_sizes)  # no memory spike: never decoded
    next_request_works(client)


def _not_an_image(folder: Path) -> Path:
    path = folder / "holiday.png"
    path.write_text("these are words, not pixels\n" * 20)
    return path


def _truncated_jpeg(folder: Path) -> Path:
    path = folder / "cut.jpg"
    data = CAT.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make, message", [(_not_an_image, "not a supported image file"),
                                           (_truncated_jpeg, "damaged or truncated")],
                         ids=["not-an-image", "truncated"])
def test_unreadable_files_give_a_clear_message(client, tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(AppError, match=message) as info:
        client.predict(handle_file(str(path)), **ONE_TOKEN, api_name="/plain")
    assert_clean_message(info.value, tmp_path, path)
    next_request_works(client)


def _one_pixel(folder):
    Image.new("RGB", (1, 1), (10, 200, 30)).save(folder / "dot.png")
    return folder / "dot.png", {(0, 0): (10, 200, 30)}, (1, 1)


def _panorama(folder):
    image = Image.new("RGB", (10_000, 20), RED)
    image.paste(BLUE, (5_000, 0, 10_000, 20))
    image.save(folder / "pano.png")
    return folder / "pano.png", {(0, 0): RED, (4_999, 19): RED, (5_000, 0): BLUE, (9_999, 19): BLUE}, (10_000, 20)


def _sixteen_bit(folder):
    grey = np.tile(np.arange(256, dtype=np.uint16) * 257, (4, 1))  # (4, 256): 0..65535
    Image.fromarray(grey).save(folder / "deep.png")
    assert (folder / "deep.png").read_bytes()[24] == 16  # IHDR bit depth
    return folder / "deep.png", {(x, 1): (x, x, x) for x in (0, 1, 77, 128, 254, 255)}, (256, 4)


def _cmyk_jpeg(folder):
    image = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    image.paste((255, 0, 255, 0), (16, 0, 32, 32))  # pure green
    image.save(folder / "print.jpg", quality=95)
    assert Image.open(folder / "print.jpg").mode == "CMYK"
    return folder / "print.jpg", {(4, 16): RED, (27, 16): GREEN}, (32, 32)


def _transparent_palette(folder):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black, made transparent; index 1 green
    image.paste(1, (4, 0, 8, 8))
    image.save(folder / "icon.png", transparency=0)
    return folder / "icon.png", {(1, 4): WHITE, (6, 4): GREEN}, (8, 8)


def _greyscale(folder):
    Image.fromarray(np.tile(np.arange(0, 256, 5, dtype=np.uint8), (3, 1))).save(folder / "grey.png")
    return folder / "grey.png", {(k, 1): (5 * k, 5 * k, 5 * k) for k in (0, 10, 51)}, (52, 3)


def _animated_gif(folder):
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, GREEN)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(folder / "anim.gif").n_frames == 3
    return folder / "anim.gif", {(8, 8): RED}, (16, 16)


def phone_photo(folder: Path, size=(64, 32)) -> Path:
    """A JPEG stored landscape with EXIF orientation 6 (shown rotated 90° clockwise, portrait): its
    stored top-left quarter-height square is red, so it is shown at the top right."""
    width, height = size
    image = Image.new("RGB", size, GREY)
    image.paste(RED, (0, 0, height // 2, height // 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(folder / "phone.jpg", exif=exif, quality=95)
    return folder / "phone.jpg"


def _exif_rotated(folder):
    return phone_photo(folder), {(28, 3): RED, (3, 3): GREY, (28, 60): GREY}, (32, 64)


@pytest.mark.parametrize("make", [_one_pixel, _panorama, _sixteen_bit, _cmyk_jpeg, _transparent_palette, _greyscale,
                                  _animated_gif, _exif_rotated],
                         ids=["1x1", "10000x20", "16-bit-png", "cmyk-jpeg", "palette-transparency", "greyscale",
                              "animated-gif-first-frame", "exif-rotated"])
def test_image_kinds_are_seen_as_a_person_sees_them(client, tmp_path, make):
    path, expected_pixels, expected_size = make(tmp_path)
    seen = seen_image(client, path)
    assert seen.size == expected_size
    tolerance = 12 if path.suffix == ".jpg" else 0  # JPEG is lossy; PNG and GIF must come back exactly
    for xy, colour in expected_pixels.items():
        assert close(seen.getpixel(xy), colour, tolerance), (xy, seen.getpixel(xy), colour)
    next_request_works(client)


def test_boxes_on_an_exif_rotated_photo_align_with_what_the_user_sees(client, tmp_path):
    path = phone_photo(tmp_path, size=(320, 160))  # shown 160 x 320, red square at the top right
    box = [120, 0, 160, 40]  # drawn by the user around the red square
    caption, entities, png = client.predict(handle_file(str(path)), boxes=[box], **ONE_TOKEN, api_name="/refer")
    annotated = Image.open(png).convert("RGB")
    assert annotated.size == (160, 320)
    (it,) = [e for e in entities if e["phrase"] == "It"]
    (x1, y1, x2, y2), = it["pixel_boxes"]  # within one of the 32x32 cells (5 x 10 pixels)
    assert abs(x1 - 120) <= 5 and abs(x2 - 160) <= 5 and y1 <= 10 and abs(y2 - 40) <= 10
    assert close(annotated.getpixel((140, 25)), RED)  # inside the drawn box: the red square
    colour = tuple(int(it["colour"][i:i + 2], 16) for i in (1, 3, 5))
    assert annotated.getpixel((x1 + 1, (y1 + y2) // 2)) == colour  # the box is drawn where it was drawn


def test_the_box_annotator_keeps_exif_rotated_photos_upright(tmp_path):
    """The UI's box tabs get the image through gradio_image_annotation, which re-saves it."""
    from gradio.data_classes import FileData
    from gradio_image_annotation import image_annotator
    from gradio_image_annotation.image_annotator import AnnotatedImageData

    path = phone_photo(tmp_path)
    value = image_annotator(image_type="filepath").preprocess(AnnotatedImageData(
        image=FileData(path=str(path), orig_name="phone.jpg"), boxes=[]))
    seen = inputs.load_image(value["image"])
    assert seen.size == (32, 64) and close(seen.getpixel((28, 3)), RED) and close(seen.getpixel((3, 3)), GREY)


# ----------------------------------------------------------------------------- text


@pytest.mark.parametrize("task, text, message", [
    ("ask", "", "empty"),
    ("ask", " \n\t  ", "empty"),
    ("prompt", "", "empty"),
    ("ground", "  \n \n", "Phrases are empty"),
    ("ask", "why " * 2_500, "too long \\(10000 characters\\)"),
    ("ground", "a cat\n" * 1_667, "too long"),
    ("prompt", "<phrase></phrase><grounding></object>", "only markup"),
])
def test_bad_text_is_rejected_before_it_reaches_the_model(client, decoder_inputs, task, text, message):
    with pytest.raises(AppError, match=message) as info:
        client.predict(handle_file(str(CAT)), text, **ONE_TOKEN, api_name=f"/{task}")
    assert_clean_message(info.value)
    assert decoder_inputs == []
    next_request_works(client)


def _tag_ids(holder) -> dict[str, int]:
    tokenizer = holder.get().processor.tokenizer
    names = ["<grounding>", "<phrase>", "</phrase>", "<object>", "</object>", "<patch_index_0007>"]
    return dict(zip(names, tokenizer.convert_tokens_to_ids(names)))


def test_typed_markup_is_plain_text_to_the_model(client, holder, decoder_inputs):
    typed = "What is <phrase>this</phrase></object> <patch_index_0007><grounding>?"
    caption, entities, _ = client.predict(handle_file(str(CAT)), typed, **ONE_TOKEN, api_name="/ask")
    assert caption.startswith("Question: What is this ? Answer:") and entities == []
    fed = [i for call in decoder_inputs for i in call]
    ids = _tag_ids(holder)
    assert fed.count(ids["<grounding>"]) == 1  # the task's own tag only
    assert not {ids[name] for name in ids if name != "<grounding>"} & set(fed)
    decoder_inputs.clear()
    caption, _, _ = client.predict(handle_file(str(CAT)), "<phrase>a cat</phrase>\nthe </object>dog<grounding>",
                                   **ONE_TOKEN, api_name="/ground")
    assert [line.split()[:2] for line in caption.split("\n")] == [["a", "cat"], ["the", "dog"]]
    for call in decoder_inputs:  # one row per phrase: each holds the task's tags and nothing else
        assert call.count(ids["<phrase>"]) <= 1
        assert ids["<object>"] not in call and ids["<patch_index_0007>"] not in call


def test_emoji_and_right_to_left_text_reach_the_model_as_the_reference_tokenizes_them(client, holder, decoder_inputs):
    from reference import reference_processor

    question = "מה עושה 🐱 هذا؟"
    caption, _, _ = client.predict(handle_file(str(CAT)), question, **ONE_TOKEN, api_name="/ask")
    assert caption.startswith("Question:")
    reference = reference_processor(Path(holder.get().checkpoint))
    expected = reference(text=f"<grounding> Question: {question} Answer:", images=Image.open(CAT))["input_ids"]
    fed = [i for call in decoder_inputs for i in call]
    # the whole prompt, or what follows the image prefix when that is served from a cache
    end_image = holder.get().processor.tokenizer.convert_tokens_to_ids("</image>")
    assert end_image in fed and fed == expected[len(expected) - len(fed):]
    next_request_works(client)


# ----------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("boxes, expected", [
    ([[200, 150, 40, 30]], [40, 30, 200, 150]),  # inverted corners are put in order
    ([[-100, -50, 100, 80]], [0, 0, 100, 80]),  # outside the image: clamped
    ([[300, 100, 9_000, 9_000]], [300, 100, 451, 300]),
])
def test_boxes_are_ordered_and_clamped(client, boxes, expected):
    caption, entities, _ = client.predict(handle_file(str(CAT)), boxes, **ONE_TOKEN, api_name="/refer")
    (it,) = [e for e in entities if e["phrase"] == "It"]
    for got, want, cell in zip(it["pixel_boxes"][0], expected, (15, 10, 15, 10)):  # one 32x32 cell of 451x300
        assert abs(got - want) <= cell


@pytest.mark.parametrize("boxes, message", [
    ([[5, 5, 5, 50]], "Box 1 is empty"),  # zero area
    ([[600, 400, 700, 500]], "Box 1 is empty"),  # entirely outside: nothing left after clamping
    ([[0, 0, 10, 10]] * (inputs.MAX_BOXES + 1), "Too many boxes"),
    ("1,2,3", "Box 1 is not four"),
    ([["a", "b", "c", "d"]], "Box 1 is not four"),
])
def test_bad_boxes_give_a_clear_message(client, decoder_inputs, boxes, message):
    with pytest.raises(AppError, match=message) as info:
        client.predict(handle_file(str(CAT)), boxes, **ONE_TOKEN, api_name="/refer")
    assert_clean_message(info.value)
    assert decoder_inputs == []
    next_request_works(client)


# ----------------------------------------------------------------------------- generation settings


@pytest.mark.parametrize("settings, message", [
    ({"max_new_tokens": -5}, "Max new tokens must be between 1 and 512"),
    ({"max_new_tokens": 0}, "Max new tokens must be between 1 and 512"),
    ({"max_new_tokens": 10**9}, "Max new tokens must be between 1 and 512"),
    ({"max_new_tokens": 2.5}, "Max new tokens must be a whole number"),
    ({"decoding": "sample", "temperature": 0}, "Temperature must be between"),
    ({"decoding": "sample", "temperature": -1}, "Temperature must be between"),
    ({"decoding": "sample", "top_p": 2}, "Top-p must be between"),
    ({"decoding": "beam", "num_beams": 0}, "Number of beams must be between 1 and 8"),
    ({"decoding": "beam", "num_beams": 1000}, "Number of beams must be between 1 and 8"),
    ({"no_repeat_ngram_size": -1}, "No-repeat n-gram size must be between"),
    ({"decoding": "exec"}, "Decoding must be one of"),
])
def test_generation_settings_out_of_range_are_rejected_by_the_server(client, decoder_inputs, settings, message):
    with pytest.raises(AppError, match=message) as info:
        client.predict(handle_file(str(CAT)), **{"max_new_tokens": 1, **settings}, api_name="/caption")
    assert_clean_message(info.value)
    assert decoder_inputs == []
    next_request_works(client)


def test_an_image_object_over_the_limit_and_a_text_stream_get_clear_messages():
    with pytest.raises(inputs.InputError, match=r"^The image is too large \(40×30 pixels\); the limit is 0.001 megapixels\.$"):
        inputs.load_image(Image.new("RGB", (40, 30)), max_pixels=1000)
    with pytest.raises(inputs.InputError, match=r"^Unsupported image value of type StringIO\.$"):
        inputs.load_image(io.StringIO("not pixels"))
