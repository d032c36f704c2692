"""Kosmos2Processor, its tokenizer and image processor against the reference on tiny checkpoints."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import kosmos2
from kosmos2.batch import BatchFeature
from kosmos2.grounding import TAG_TOKENS, patch_index_token
from kosmos2.hub import CheckpointError
from kosmos2.image_processing import ImageProcessorConfig, Kosmos2ImageProcessor
from kosmos2.processing import AutoProcessor, Kosmos2Processor
from reference import reference_processor

CHECKPOINTS = {
    "tags": {},
    "notags": {"tokenizer_with_tags": False},
    "new": {"processor_config_style": "new"},
}
SNOWMAN = (
    "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> "
    "warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
)
TWO_PHRASES = "<grounding> An image of<phrase> a snowman</phrase> warming himself by<phrase> a fire</phrase>."
PROMPTS = {
    "tags": "<grounding>An image of",
    "two_phrases": TWO_PHRASES,
    "no_tags": "An image of a snowman",
    "spaces": "   a dog on the grass  \n",
    "unicode": "ünïcødé 日本 ﬁ café — “quotes”",
    "empty": "",
}
BBOXES = {
    "none": None,
    "pair": [(44, 863), None],
    "floats": [(0.1, 0.2, 0.5, 0.9), (0.0, 0.0, 1.0, 1.0)],
    "lists": [[(0.1, 0.2, 0.5, 0.9), (5, 911)], []],
}


def _random_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    data = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(data[..., 0] if channels == 1 else data, mode)


IMAGES = {
    "rgb": _random_image("RGB", (40, 30), 0),
    "rgba": _random_image("RGBA", (33, 61), 1),
    "gray": _random_image("L", (20, 20), 2),
    "tiny": _random_image("RGB", (7, 5), 3),
}


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def processors(request, make_checkpoint):
    """(ours, reference) on one tiny checkpoint."""
    folder = make_checkpoint(request.param, **CHECKPOINTS[request.param])
    return Kosmos2Processor.from_pretrained(folder), reference_processor(folder)


@pytest.fixture(scope="module")
def tags_processors(make_checkpoint):
    folder = make_checkpoint("tags")
    return Kosmos2Processor.from_pretrained(folder), reference_processor(folder)


def _plain(value):
    return value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else value


def assert_same(ours: BatchFeature, ref, length_as_list: bool = False) -> None:
    """Same keys; ids and masks identical (values, container type, dtype); pixels within 1e-4."""
    assert set(ours) == set(ref.keys())
    for key in ref.keys():
        a, b = ours[key], ref[key]
        if key == "pixel_values":
            a = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.stack(a))
            b = b if isinstance(b, torch.Tensor) else torch.from_numpy(np.stack(b))
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
            continue
        assert _plain(a) == _plain(b), key
        if key == "length" and length_as_list:
            continue  # the reference leaves it a list when an image is given; we convert it too
        assert type(a) is type(b), key
        if isinstance(b, (torch.Tensor, np.ndarray)):
            assert a.dtype == b.dtype, key


def _call_both(processors, **kwargs):
    ours, ref = processors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ours(**kwargs), ref(**kwargs)


# --------------------------------------------------------------------------- parity: single prompts


@pytest.mark.parametrize("return_tensors", [None, "pt", "np"])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_single_prompt_with_image(processors, prompt, return_tensors):
    image = list(IMAGES.values())[list(PROMPTS).index(prompt) % len(IMAGES)]
    assert_same(*_call_both(processors, text=PROMPTS[prompt], images=image, return_tensors=return_tensors))


@pytest.mark.parametrize("image", list(IMAGES))
def test_every_image_kind(processors, image):
    assert_same(*_call_both(processors, text=PROMPTS["tags"], images=IMAGES[image], return_tensors="pt"))


@pytest.mark.parametrize("bboxes", list(BBOXES))
def test_bboxes(processors, bboxes):
    assert_same(*_call_both(processors, text=TWO_PHRASES, images=IMAGES["rgb"], bboxes=BBOXES[bboxes]))


def test_bboxes_batch_and_text_only(processors):
    texts = [TWO_PHRASES, "<grounding><phrase> It</phrase> is", "no phrase"]
    bboxes = [BBOXES["lists"], [(0.25, 0.25, 0.5, 0.75)], None]
    assert_same(*_call_both(processors, text=texts, images=[IMAGES["rgb"]] * 3, bboxes=bboxes, padding=True))
    assert_same(*_call_both(processors, text=TWO_PHRASES, bboxes=BBOXES["floats"]))


@pytest.mark.parametrize("prompt", ["tags", "spaces", "empty"])
@pytest.mark.parametrize("options", [
    {"add_eos_token": True},
    {"add_special_tokens": False},
    {"add_special_tokens": False, "add_eos_token": True},
    {"first_image_token_id": 100},
    {"num_image_tokens": 3},
])
def test_special_token_options(processors, prompt, options):
    for images in (IMAGES["tiny"], None):
        assert_same(*_call_both(processors, text=PROMPTS[prompt], images=images, **options))


def test_text_only(processors):
    for prompt in PROMPTS.values():
        assert_same(*_call_both(processors, text=prompt))
    assert_same(*_call_both(processors, text=PROMPTS["spaces"], return_attention_mask=False))


def test_images_only(processors):
    assert_same(*_call_both(processors, images=IMAGES["rgba"]))
    assert_same(*_call_both(processors, images=list(IMAGES.values()), return_tensors="pt"))


# --------------------------------------------------------------------------- parity: batches


BATCH = [PROMPTS["tags"], "a", PROMPTS["two_phrases"], PROMPTS["unicode"]]


@pytest.mark.parametrize("with_images", [True, False])
@pytest.mark.parametrize("options", [
    {"padding": True},
    {"padding": "longest", "return_tensors": "pt"},
    {"padding": True, "return_tensors": "np", "padding_side": "right"},
    {"padding": "max_length", "max_length": 120, "return_tensors": "pt"},
    {"padding": True, "pad_to_multiple_of": 8, "return_tensors": "pt"},
    {"padding": "max_length", "max_length": 80, "pad_to_multiple_of": 16, "truncation": True},
    {"padding": "max_length", "max_length": 70, "truncation": True, "return_tensors": "pt"},
    {"padding": True, "truncation": True, "max_length": 72, "return_tensors": "pt"},
    {"truncation": "longest_first", "max_length": 70},
    {"max_length": 69},
    {"padding": True, "add_eos_token": True, "return_tensors": "pt"},
    {"padding": True, "add_special_tokens": False},
    {"padding": "max_length", "return_tensors": "pt"},  # model_max_length from tokenizer_config.json
    {"padding": True, "return_length": True},
])
def test_batches(processors, with_images, options):
    texts = BATCH if with_images else [t for t in BATCH if t]
    images = [IMAGES[k] for k in ("rgb", "rgba", "gray", "tiny")] if with_images else None
    ours, ref = processors
    ref.tokenizer.padding_side = options.get("padding_side", "left")
    try:
        assert_same(*_call_both(processors, text=texts, images=images, **options))
    finally:
        ref.tokenizer.padding_side = "left"


def test_image_batch_is_padded_even_without_padding(processors):
    # The reference pads a batch with images to its longest row whatever `padding` says.
    assert_same(*_call_both(processors, text=BATCH, images=[IMAGES["tiny"]] * 4, return_tensors="pt"))
    for processor in processors:
        with pytest.raises(ValueError):
            processor(text=BATCH[:2], return_tensors="pt")


def test_same_length_batch_is_not_padded(processors):
    options = {"padding": True, "return_tensors": "pt"}
    assert_same(*_call_both(processors, text=["a", "a"], images=[IMAGES["tiny"]] * 2, **options))


def test_return_length_with_image_is_a_tensor_too(processors):
    ours, ref = _call_both(processors, text=BATCH, images=[IMAGES["tiny"]] * 4, padding=True, return_length=True,
                           return_tensors="pt")
    assert_same(ours, ref, length_as_list=True)
    assert isinstance(ours["length"], torch.Tensor)


# --------------------------------------------------------------------------- deliberate differences


def test_single_prompt_with_image_is_padded_like_a_batch_of_one(processors):
    # The reference skips padding for one prompt with an image; we pad it as it pads a batch of one.
    options = {"padding": "max_length", "max_length": 80, "pad_to_multiple_of": 16}
    ours, _ = _call_both(processors, text=PROMPTS["tags"], images=IMAGES["tiny"], **options)
    _, ref = _call_both(processors, text=[PROMPTS["tags"]], images=[IMAGES["tiny"]], **options)
    for key in ("input_ids", "attention_mask", "image_embeds_position_mask"):
        assert ours[key] == ref[key][0]
    assert len(ours["input_ids"]) == 80


def test_max_length_with_padding_true(processors):
    ours, ref = processors
    # Without an image, as the reference: a warning, and max_length is ignored.
    with pytest.warns(UserWarning, match="max_length is ignored"):
        out = ours(text=BATCH[:2], padding=True, max_length=5)
    assert out["input_ids"] == ref(text=BATCH[:2], padding=True)["input_ids"]
    # With an image a max_length truncates (the reference truncates too, but then pads the rows to
    # the untruncated length); we give what the reference gives with explicit truncation.
    images = [IMAGES["tiny"]] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ours(text=BATCH, images=images, padding=True, max_length=70)
    expected = ref(text=BATCH, images=images, padding=True, max_length=70, truncation=True)
    assert out["input_ids"] == expected["input_ids"]
    assert out["image_embeds_position_mask"] == expected["image_embeds_position_mask"]


def test_truncating_into_the_image_tokens_raises(processors):
    ours, _ = processors
    with pytest.raises(ValueError, match="cuts into the 64 image tokens"):
        ours(text="An image of", images=IMAGES["tiny"], max_length=60)
    with pytest.raises(ValueError, match="cuts into"):
        ours(text="An image of", images=IMAGES["tiny"], max_length=66)  # </image> cut off


# --------------------------------------------------------------------------- layout (SPEC.md)


def test_layout_matches_spec(tags_processors):
    ours, _ = tags_processors
    tok = ours.tokenizer
    out = ours(text="<grounding>An image of", images=IMAGES["rgb"])
    ids, mask = out["input_ids"], out["image_embeds_position_mask"]
    image_id, end_image_id, grounding_id = tok.convert_tokens_to_ids(["<image>", "</image>", "<grounding>"])
    assert ids[:2] == [tok.bos_token_id, image_id]
    assert ids[2:66] == list(range(tok.unk_token_id + 1, tok.unk_token_id + 65)) == list(range(4, 68))
    assert ids[66:68] == [end_image_id, grounding_id]
    assert mask == [0, 0] + [1] * 64 + [0] * (len(ids) - 66)
    assert out["attention_mask"] == [1] * len(ids)
    assert tok.decode(ids[68:]) == "An image of"
    eos = ours(text="<grounding>An image of", images=IMAGES["rgb"], add_eos_token=True)["input_ids"]
    assert eos == ids + [tok.eos_token_id]


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids_match_reference(processors):
    ours, ref = processors
    tok, rtok = ours.tokenizer, ref.tokenizer
    names = [*TAG_TOKENS, *(patch_index_token(i) for i in (0, 1, 44, 1023)), "<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert tok.convert_tokens_to_ids(names) == rtok.convert_tokens_to_ids(names)
    assert len(tok) == len(rtok)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids("</doc>") == tok.convert_tokens_to_ids("<mask>") + 1
    assert tok.encode("hi there") == rtok("hi there")["input_ids"]
    assert tok.encode(SNOWMAN, add_special_tokens=False) == rtok(SNOWMAN, add_special_tokens=False)["input_ids"]


def test_decode_matches_reference(processors):
    ours, ref = processors
    rng = random.Random(7)
    size = len(ours.tokenizer)
    specials = [0, 1, 2, 3, ours.tokenizer.convert_tokens_to_ids("<mask>")]
    sequences = [ref.tokenizer(SNOWMAN)["input_ids"]]
    for _ in range(60):
        sequences.append([rng.choice(specials) if rng.random() < 0.2 else rng.randrange(size)
                          for _ in range(rng.randint(0, 30))])
    for skip in (False, True):
        expected = ref.batch_decode(sequences, skip_special_tokens=skip)
        assert ours.batch_decode(sequences, skip_special_tokens=skip) == expected
        assert ours.decode(torch.tensor(sequences[0]), skip_special_tokens=skip) == expected[0]
    # Tags stay, specials go.
    text = ours.decode([0, *ours.tokenizer.encode(SNOWMAN, add_special_tokens=False), 2, 1], skip_special_tokens=True)
    assert "<s>" not in text and "</s>" not in text and "<pad>" not in text and "<phrase>" in text
    assert ours.post_process_generation(text) == ref.post_process_generation(text)


def test_tokenizer_errors(tags_processors):
    tok = tags_processors[0].tokenizer
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.convert_tokens_to_ids("<no_such_token>")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.convert_ids_to_tokens(len(tok))


# --------------------------------------------------------------------------- post-processing


def test_post_process_generation(tags_processors):
    ours, ref = tags_processors
    expected = ("An image of a snowman warming himself by a fire.",
                [("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
                 ("a fire", (41, 47), [(0.171875, 0.015625, 0.484375, 0.890625)])])
    text = "<image>. the, to and of</image>" + SNOWMAN
    assert ours.post_process_generation(text) == expected == ref.post_process_generation(text)
    assert ours.post_process_generation(text, cleanup_and_extract=False) == SNOWMAN
    assert ref.post_process_generation(text, cleanup_and_extract=False) == SNOWMAN


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def image_processors():
    from transformers import CLIPImageProcessorPil

    size = {"height": 56, "width": 56}
    ours = Kosmos2ImageProcessor(ImageProcessorConfig(height=56, width=56))
    return ours, CLIPImageProcessorPil(size=size, crop_size=size)


def _image_inputs():
    rng = np.random.default_rng(5)
    palette = Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 5
    rgba = rng.integers(0, 256, (30, 20, 4), dtype=np.uint8)
    return {
        "LA": _random_image("LA", (20, 30), 6),
        "P+transparency": palette,
        "I;16": Image.fromarray(rng.integers(0, 65535, (30, 20), dtype=np.uint16)),
        "CMYK": Image.fromarray(rgba, "RGBA").convert("CMYK"),
        "np RGBA": rgba,
        "np RGB": rgba[..., :3].copy(),
        "np HxWx1": rgba[..., :1].copy(),
        "large": Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)),
    }


@pytest.mark.parametrize("name", list(_image_inputs()))
def test_image_inputs_match_reference(image_processors, name):
    ours, ref = image_processors
    image = _image_inputs()[name]
    torch.testing.assert_close(ours(image, return_tensors="pt")["pixel_values"],
                               ref(image, return_tensors="pt")["pixel_values"], atol=1e-4, rtol=0)


def test_one_image_for_several_prompts_is_processed_once(image_processors, monkeypatch):
    ours, ref = image_processors
    image, other = _random_image("RGB", (40, 30), 10), _random_image("RGB", (30, 40), 11)
    images = [image, other, image, image]
    expected = ref(images, return_tensors="pt")["pixel_values"]
    calls = []
    real = kosmos2.image_processing.preprocess_image
    monkeypatch.setattr(kosmos2.image_processing, "preprocess_image", lambda im, cfg: calls.append(im) or real(im, cfg))
    torch.testing.assert_close(ours(images, return_tensors="pt")["pixel_values"], expected, atol=1e-4, rtol=0)
    assert [id(c) for c in calls] == [id(image), id(other)]
    arrays = ours(images)["pixel_values"]  # plain lists: every row its own array
    arrays[0][:] = 0
    assert float(np.abs(arrays[2]).sum()) > 0 and len({id(a) for a in arrays}) == 4


def test_image_from_path_and_2d_array(image_processors, tmp_path):
    ours, ref = image_processors
    image = _random_image("RGBA", (21, 13), 8)
    image.save(tmp_path / "a.png")
    expected = ref(image, return_tensors="pt")["pixel_values"]
    for source in (tmp_path / "a.png", str(tmp_path / "a.png")):
        torch.testing.assert_close(ours(source, return_tensors="pt")["pixel_values"], expected, atol=1e-4, rtol=0)
    gray = _random_image("L", (9, 11), 9)
    torch.testing.assert_close(ours(np.array(gray), return_tensors="pt")["pixel_values"],
                               ref(gray, return_tensors="pt")["pixel_values"], atol=1e-4, rtol=0)


def test_bad_images_raise(tmp_path):
    processor = Kosmos2ImageProcessor(ImageProcessorConfig(height=56, width=56))
    (tmp_path / "notes.txt").write_text("not an image")
    _random_image("RGB", (64, 64), 10).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    bad = [
        (tmp_path / "notes.txt", "not an image"),
        (tmp_path / "cut.png", "truncated or corrupt"),
        (tmp_path / "missing.png", "No such image file"),
        (np.zeros((5, 7, 3), dtype=np.float32), "uint8"),
        (np.zeros((5, 7, 2), dtype=np.uint8), "shape"),
        (np.zeros((3, 5, 7, 3), dtype=np.uint8), "shape"),
        (np.zeros((0, 7, 3), dtype=np.uint8), "empty"),
        (12, "Expected a PIL image"),
        (Image.new("RGB", (0, 5)), "empty"),
        ([[IMAGES["tiny"]]], "Nested"),
        ([], "No images"),
    ]
    for image, message in bad:
        with pytest.raises(ValueError, match=message):
            processor(image)


def test_decompression_bombs_raise(tmp_path, monkeypatch):
    processor = Kosmos2ImageProcessor()
    _random_image("RGB", (30, 30), 11).save(tmp_path / "bomb.png")
    for limit in (800, 400):  # over the limit: pillow warns; over twice the limit: pillow raises
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning may slip through
            with pytest.raises(ValueError, match="decompression bomb"):
                processor(tmp_path / "bomb.png")


def test_image_settings(make_checkpoint, tmp_path):
    legacy = ImageProcessorConfig.from_folder(make_checkpoint("tags"))
    new = ImageProcessorConfig.from_folder(make_checkpoint("new", **CHECKPOINTS["new"]))
    assert legacy == new == ImageProcessorConfig(height=56, width=56)
    assert ImageProcessorConfig.from_dict({"size": 30}).height == 30
    size = {"height": 20, "width": 36}
    config = ImageProcessorConfig.from_dict({"size": size, "crop_size": size, "do_center_crop": True})
    pixels = Kosmos2ImageProcessor(config)(IMAGES["rgb"], return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, 3, 20, 36) and pixels.dtype == np.float32
    unsupported = [
        {"size": {"shortest_edge": 224}},
        {"do_resize": False},
        {"do_convert_rgb": False},
        {"size": 224, "do_center_crop": True, "crop_size": {"height": 200, "width": 200}},
    ]
    for settings in unsupported:
        with pytest.raises(ValueError, match="Unsupported"):
            ImageProcessorConfig.from_dict(settings)
    (tmp_path / "processor_config.json").write_text(json.dumps({"num_image_tokens": 64}))
    with pytest.raises(ValueError, match="image_processor"):
        ImageProcessorConfig.from_folder(tmp_path)


# --------------------------------------------------------------------------- the batch object and errors


def test_batch_feature_access_and_to(tags_processors):
    ours, _ = tags_processors
    batch = ours(text=["a", "b c"], images=[IMAGES["tiny"]] * 2, padding=True, return_tensors="pt")
    assert batch.input_ids is batch["input_ids"]
    with pytest.raises(AttributeError):
        batch.no_such_key
    assert batch.to(torch.float16) is batch
    assert batch.pixel_values.dtype == torch.float16
    assert batch.input_ids.dtype == batch.attention_mask.dtype == batch.image_embeds_position_mask.dtype == torch.int64
    assert batch.to("cpu").input_ids.device.type == "cpu"


def test_exports():
    assert kosmos2.AutoProcessor is AutoProcessor is Kosmos2Processor
    assert kosmos2.Kosmos2Processor is Kosmos2Processor


def test_from_pretrained_errors(tmp_path, make_checkpoint):
    with pytest.raises(CheckpointError, match="not found"):
        Kosmos2Processor.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Kosmos2Processor.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((make_checkpoint("tags") / "tokenizer.json").read_bytes())
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        Kosmos2Processor.from_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "Give images, text, or both"),
    ({"text": ["a", "b"], "images": IMAGES["tiny"]}, "2 prompts but 1 images"),
    ({"text": "a", "images": [IMAGES["tiny"]] * 2}, "1 prompts but 2 images"),
    ({"text": ["a", "b"], "bboxes": [None]}, "one entry per prompt"),
    ({"text": "<phrase> a</phrase>", "bboxes": [(1, 2), (3, 4)]}, "2 entries but"),
    ({"text": "<phrase> a</phrase>", "bboxes": [(10, 20, 30, 40)]}, "pixel coordinates"),
    ({"text": "<phrase> a</phrase>", "bboxes": [(0.5, 0.1, 0.2, 0.9)]}, "x2 > x1"),
    ({"text": ["a", 3]}, "string or a non-empty list of strings"),
    ({"text": []}, "non-empty list"),
    ({"text": "a", "padding": "sideways"}, "padding must be"),
    ({"text": "a", "truncation": "only_second"}, "truncation must be"),
    ({"text": "a", "max_length": 0}, "max_length must be"),
    ({"text": "a", "max_length": 1, "add_eos_token": True}, "no room for the special tokens"),
    ({"text": "a", "padding": True, "truncation": True, "max_length": 10, "pad_to_multiple_of": 4}, "multiple"),
    ({"text": "a", "return_tensors": "tf"}, "return_tensors"),
    ({"text": "a", "padding_side": "up"}, "padding_side"),
    ({"text": "a", "num_image_tokens": 0}, "num_image_tokens"),
    ({"text": "a", "images": IMAGES["tiny"], "first_image_token_id": 1200}, "first_image_token_id=1200"),
    ({"text": "a", "images": IMAGES["tiny"], "first_image_token_id": -1}, "first_image_token_id=-1"),
    ({"text": ["a", "b c d"], "return_tensors": "pt"}, "different lengths"),
])
def test_bad_calls_raise(tags_processors, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tags_processors[0](**kwargs)


def test_tokenizer_settings_files(make_checkpoint, tmp_path):
    from kosmos2.tokenization import Kosmos2Tokenizer

    (tmp_path / "tokenizer.json").write_bytes((make_checkpoint("tags") / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30, "eos_token": "<pad>"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "</s>", "lstrip": False}}))
    tok = Kosmos2Tokenizer.from_folder(tmp_path)
    assert tok.model_max_length is None  # transformers' "no limit" sentinel
    assert tok.eos_token_id == 2  # special_tokens_map.json wins over tokenizer_config.json
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": "<no_mask>"}))
    with pytest.raises(ValueError, match="'<no_mask>' is not in the vocabulary"):
        Kosmos2Tokenizer.from_folder(tmp_path)
