"""Boxes on non-square and rotated images: clipping, normalising and the prompt's patch tokens.

Expected tokens are hand-derived from SPEC.md's grid rule: first = floor(y1·32)·32 + floor(x1·32),
second = ceil(y2·32 − 1)·32 + ceil(x2·32 − 1), on boxes normalised by the image's width (x) and
height (y). Every image here is wider than high (or the other way round), so an x/y or
width/height swap changes the outcome.
"""

from __future__ import annotations

import pytest
from PIL import Image

from kosmos2.demo import inputs
from kosmos2.demo.inputs import InputError
from kosmos2.demo.tasks import build_request


def test_boxes_are_clipped_to_a_wide_image():
    # 128 wide, 64 high: x is clipped at 128, y at 64
    assert inputs.validate_boxes([(100, 50, 140, 70)], 128, 64) == [(100, 50, 128, 64)]
    assert inputs.validate_boxes([(-5, 10, 90, 60)], 128, 64) == [(0, 10, 90, 60)]
    with pytest.raises(InputError, match="Box 1 is empty"):
        inputs.validate_boxes([(10, 70, 50, 90)], 128, 64)  # below the image: nothing left


def test_boxes_are_clipped_to_a_tall_image():
    # 40 wide, 100 high
    assert inputs.validate_boxes([(10, 60, 60, 120)], 40, 100) == [(10, 60, 40, 100)]
    with pytest.raises(InputError, match="Box 1 is empty"):
        inputs.validate_boxes([(45, 10, 60, 20)], 40, 100)  # right of the image


def test_normalising_divides_x_by_the_width_and_y_by_the_height():
    assert inputs.normalise_box((32, 8, 96, 40), 128, 64) == (0.25, 0.125, 0.75, 0.625)


def test_a_box_on_a_wide_image_becomes_the_hand_derived_patch_tokens():
    image = Image.new("RGB", (128, 64), "grey")
    request = build_request("refer", image, boxes=[(32, 8, 96, 40)])  # (0.25, 0.125, 0.75, 0.625)
    assert request.prompts == ("<grounding><phrase> It</phrase><object><patch_index_0136><patch_index_0631>"
                               "</object> is",)


def test_a_box_drawn_on_a_rotated_image_is_read_in_the_rotated_frame():
    """64 x 32 turned once clockwise is 32 x 64; the box (8, 16, 24, 48) on it is (0.25, 0.25, 0.75, 0.75)."""
    image = Image.new("RGB", (64, 32), "grey")
    request = build_request("refer", image, boxes=[(8, 16, 24, 48)], quarter_turns=1)
    assert request.image.size == (32, 64)
    assert request.prompts == ("<grounding><phrase> It</phrase><object><patch_index_0264><patch_index_0759>"
                               "</object> is",)
