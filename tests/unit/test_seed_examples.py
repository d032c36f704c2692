"""The seed document's three examples (transformers' KOSMOS-2 page), run with ``kosmos2`` on the tiny checkpoint.

The tiny checkpoint has random weights, so the text is not the snowman caption; the checks are the
shapes and types the examples show, and identical ids to the reference model on the same inputs.
"""

from __future__ import annotations


import torch
from PIL import Image

from launch import ROOT
from reference_model import reference_model

IMAGE = ROOT / "assets" / "cat.jpg"


def test_processor_example(tiny_checkpoint):
    from kosmos2 import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    inputs = processor(text="<grounding> An image of", images=Image.open(IMAGE), return_tensors="pt")
    assert {"pixel_values", "input_ids", "attention_mask", "image_embeds_position_mask"} <= set(inputs.keys())
    assert inputs["pixel_values"].shape == (1, 3, 56, 56)
    assert int(inputs["image_embeds_position_mask"].sum()) == 64
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == inputs["image_embeds_position_mask"].shape


def test_kosmos2_model_example(tiny_checkpoint):
    from kosmos2 import AutoProcessor, Kosmos2Model

    model = Kosmos2Model.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    text = (
        "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863>"
        "</object> warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911>"
        "</object>"
    )
    inputs = processor(text=text, images=Image.open(IMAGE), return_tensors="pt", add_eos_token=True)
    with torch.no_grad():
        last_hidden_state = model(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            image_embeds_position_mask=inputs["image_embeds_position_mask"],
        ).last_hidden_state
    assert isinstance(last_hidden_state, torch.Tensor)
    assert list(last_hidden_state.shape) == [1, inputs["input_ids"].shape[1], model.config.text_config.embed_dim]
    assert inputs["input_ids"][0, -1].item() == 2  # add_eos_token


def test_generation_example(tiny_checkpoint):
    from kosmos2 import AutoProcessor, Kosmos2ForConditionalGeneration

    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    inputs = processor(text="<grounding> An image of", images=Image.open(IMAGE), return_tensors="pt")
    generated_ids = model.generate(
        pixel_values=inputs["pixel_values"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        image_embeds=None,
        image_embeds_position_mask=inputs["image_embeds_position_mask"],
        use_cache=True,
        max_new_tokens=64,
    )
    with torch.no_grad():
        expected = reference_model(tiny_checkpoint).generate(**dict(inputs), max_new_tokens=64)
    assert torch.equal(generated_ids, expected)

    generated_text = processor.batch_decode(generated_ids, skip_special_tokens=True)[0]
    processed_text = processor.post_process_generation(generated_text, cleanup_and_extract=False)
    assert isinstance(generated_text, str) and isinstance(processed_text, str)
    assert processed_text.startswith("<grounding> An image of")
    caption, entities = processor.post_process_generation(generated_text)
    assert isinstance(caption, str) and caption.startswith("An image of")
    assert isinstance(entities, list)
    for phrase, (start, end), boxes in entities:
        assert isinstance(phrase, str) and 0 <= start <= end <= len(caption)
        assert all(len(box) == 4 for box in boxes)
