"""Examples to model inputs: the reference processor's ids, slot mask and pixels (the reference inserting
the boxes itself), and the labels each ``--loss-on`` masks, derived by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kosmos2 import AutoProcessor
from kosmos2.training import Encoder, ExampleError, Example, collate, read_examples
from reference import reference_processor

TEXT = "<grounding> An image of<phrase> a red box</phrase> beside<phrase> two dots</phrase>."
BOXES = [[0.1, 0.2, 0.5, 0.6], [[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0]]]


@pytest.fixture()
def grounded(tmp_path: Path) -> Example:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "a.png", "text": TEXT, "bboxes": BOXES}) + "\n")
    examples, problems = read_examples(tmp_path / "data.jsonl", tmp_path)
    assert not problems and len(examples) == 1
    return examples[0]


def _reference(folder: Path, example: Example, **kwargs):
    ref = reference_processor(folder)
    boxes = [tuple(BOXES[0]), [tuple(b) for b in BOXES[1]]]
    return ref(images=Image.open(example.image).convert("RGB"), text=TEXT, bboxes=boxes, return_tensors="pt", **kwargs)


def test_a_row_is_what_the_reference_processor_builds_with_the_end_token(tiny_checkpoint, grounded):
    row = Encoder(AutoProcessor.from_pretrained(tiny_checkpoint)).encode(grounded)
    want = _reference(tiny_checkpoint, grounded, add_eos_token=True)
    assert row.input_ids == want["input_ids"][0].tolist()
    assert row.input_ids[-1] == 2  # </s>
    assert row.image_mask == want["image_embeds_position_mask"][0].tolist()
    torch.testing.assert_close(row.pixel_values, want["pixel_values"][0], atol=1e-5, rtol=0)


def test_loss_on_all_learns_from_the_image_end_and_answer_leaves_out_the_prompt(tiny_checkpoint, grounded):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    everything = Encoder(processor, "all").encode(grounded)
    # <s>, <image> and the 64 slots carry no label; </image> (position 66) is the first that does
    assert everything.labels[:66] == [-100] * 66
    assert everything.labels[66:] == everything.input_ids[66:]
    assert everything.input_ids[66] == processor.tokenizer.convert_tokens_to_ids("</image>")
    answer = Encoder(processor, "answer").encode(grounded)
    prompt = reference_processor(tiny_checkpoint)(
        images=Image.open(grounded.image).convert("RGB"), text=grounded.prompt
    )
    cut = len(prompt["input_ids"])
    assert grounded.prompt == "<grounding> An image of"
    assert answer.labels[:cut] == [-100] * cut and answer.labels[cut:] == answer.input_ids[cut:]
    assert processor.decode(answer.input_ids[cut : cut + 1]) == "<phrase>"
    assert answer.targets == len(answer.input_ids) - cut - 1 + 1  # every answer token and </s>, from cut on


def test_collate_pads_on_the_right_without_labels(tiny_checkpoint, grounded):
    encoder = Encoder(AutoProcessor.from_pretrained(tiny_checkpoint), "answer")
    short = Example(
        grounded.image,
        "<grounding><phrase> a box</phrase>",
        "<object><patch_index_0000><patch_index_1023></object>",
        "x:1",
    )
    rows = [encoder.encode(grounded), encoder.encode(short)]
    batch = collate(rows, pad_token_id=1)
    n0, n1 = len(rows[0].input_ids), len(rows[1].input_ids)
    assert batch["input_ids"].shape == (2, max(n0, n1)) and n0 > n1
    assert batch["input_ids"][1, n1:].eq(1).all() and batch["attention_mask"][1, n1:].eq(0).all()
    assert batch["labels"][1, n1:].eq(-100).all() and batch["image_embeds_position_mask"][1].sum() == 64
    assert batch["pixel_values"].shape == (2, 3, 56, 56)


def test_a_prompt_that_cuts_a_token_or_an_unreadable_image_is_refused(tiny_checkpoint, grounded, tmp_path):
    encoder = Encoder(AutoProcessor.from_pretrained(tiny_checkpoint), "answer")
    with pytest.raises(ExampleError, match="x:3: the prompt"):
        encoder.encode(Example(grounded.image, "<grounding> An ima", "ge of a box.", "x:3"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ExampleError, match="x:4: cannot read image"):
        encoder.check(Example(tmp_path / "bad.png", "<grounding>", " a box.", "x:4"))
