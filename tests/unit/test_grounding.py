"""Grounding logic against SPEC.md's values, hand-derived values and the reference implementation."""

from __future__ import annotations

import random
import sys

import pytest

from kosmos2 import grounding as g
from reference import reference_processor

SNOWMAN = (
    "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> "
    "warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
)
SNOWMAN_RESULT = (
    "An image of a snowman warming himself by a fire.",
    [("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
     ("a fire", (41, 47), [(0.171875, 0.015625, 0.484375, 0.890625)])],
)


@pytest.fixture(scope="module")
def ref(make_checkpoint):
    return reference_processor(make_checkpoint("tags"))


@pytest.fixture(scope="module")
def ref_module(ref):
    return sys.modules[type(ref).__module__]


def test_torch_is_not_imported():
    import subprocess

    code = "import sys, kosmos2.grounding; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seed_values():
    assert g.post_process_generation(SNOWMAN) == SNOWMAN_RESULT
    assert g.patch_indices_to_box(44, 863) == (0.390625, 0.046875, 0.984375, 0.828125)
    assert g.box_to_patch_indices((0.390625, 0.046875, 0.984375, 0.828125)) == (44, 863)
    # Hand-derived: the whole image is cell 0 to cell 1023; one cell maps to its own edges.
    assert g.box_to_patch_indices((0.0, 0.0, 1.0, 1.0)) == (0, 1023)
    assert g.patch_indices_to_box(33, 33) == (1 / 32, 1 / 32, 2 / 32, 2 / 32)
    assert g.patch_indices_to_box(32, 63) == (0.0, 1 / 32, 1.0, 2 / 32)  # one row: edges
    assert g.post_process_generation(SNOWMAN, cleanup_and_extract=False) == SNOWMAN


def test_snowman_matches_reference(ref):
    for text in (SNOWMAN, "<image>xx</image>" + SNOWMAN, "<s><image></image>" + SNOWMAN + "</s>"):
        for mode in (True, False):
            assert g.post_process_generation(text, mode) == ref.post_process_generation(text, mode)


def test_box_to_patch_indices_matches_reference(ref_module):
    rng = random.Random(0)
    for _ in range(2000):
        x1, x2 = sorted(rng.random() for _ in range(2))
        y1, y2 = sorted(rng.random() for _ in range(2))
        if x2 == x1 or y2 == y1:
            continue
        box = (x1, y1, x2, y2)
        assert g.box_to_patch_indices(box) == ref_module.coordinate_to_patch_index(box, 32)
    for box in [(0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 0.53125, 0.53125), (0.25, 0.0, 0.5, 1.0)]:
        assert g.box_to_patch_indices(box) == ref_module.coordinate_to_patch_index(box, 32)


def test_patch_indices_to_box_matches_reference(ref_module):
    rng = random.Random(1)
    pairs = [(0, 0), (0, 1023), (1023, 1023), (44, 863), (32, 63), (1, 993)]
    for _ in range(3000):
        (r1, r2), (c1, c2) = sorted(rng.randrange(32) for _ in range(2)), sorted(rng.randrange(32) for _ in range(2))
        pairs.append((r1 * 32 + c1, r2 * 32 + c2))
    for a, b in pairs:
        assert g.patch_indices_to_box(a, b) == ref_module.patch_index_to_coordinate(a, b, 32)


def test_insert_object_tags():
    text = "<grounding><phrase> a dog</phrase> and<phrase> two cats</phrase> and<phrase> it</phrase>"
    boxes = [(44, 863), [(0.0, 0.0, 1.0, 1.0), (5, 911)], None]
    assert g.insert_object_tags(text, boxes) == (
        "<grounding><phrase> a dog</phrase><object><patch_index_0044><patch_index_0863></object> and"
        "<phrase> two cats</phrase><object><patch_index_0000><patch_index_1023></delimiter_of_multi_objects/>"
        "<patch_index_0005><patch_index_0911></object> and<phrase> it</phrase>"
    )
    assert g.insert_object_tags(text, None) == text
    assert g.insert_object_tags(text, []) == text
    assert g.insert_object_tags(text, [None, [], None]) == text
    # The inserted markup parses back to the same boxes.
    _, entities = g.extract_entities(g.insert_object_tags(text, boxes))
    assert entities[0][2] == [g.patch_indices_to_box(44, 863)]
    # Cells 0 and 1023 share no row or column: cell centres (hand-derived).
    assert entities[1][2] == [(1 / 64, 1 / 64, 63 / 64, 63 / 64), g.patch_indices_to_box(5, 911)]


@pytest.mark.parametrize(
    "bboxes, message",
    [
        ([(44, 863)], "1 entries but .* has 3"),
        ([None, None, None, None], "4 entries but .* has 3"),
        ([(0.1, 0.2, 0.3), None, None], "2 ints .* or 4 floats"),
        ([[0.1, 0.2, 0.3, 0.4], None, None], "tuple"),
        ([(10, 20, 30, 40), None, None], "pixel coordinates"),
        ([(0.1, 0.2, 3, 0.4), None, None], "4 floats"),
        ([(0.5, 0.2, 0.4, 0.4), None, None], "x2 > x1"),
        ([(0.1, 0.5, 0.4, 0.5), None, None], "y2 > y1"),
        ([(0.1, 0.2, 1.5, 0.4), None, None], "outside"),
        ([(-0.1, 0.2, 0.5, 0.4), None, None], "outside"),
        ([(float("nan"), 0.2, 0.5, 0.4), None, None], "outside"),
        ([(0, 1024), None, None], "lie in"),
        ([(863, 44), None, None], "above and left"),
        ([(True, 5), None, None], "2 ints"),
        ([[(1, 2), None], None, None], "tuple"),
        ("not a list", "None or a list"),
    ],
)
def test_bad_boxes_raise(bboxes, message):
    text = "<phrase> a</phrase><phrase> b</phrase><phrase> c</phrase>"
    with pytest.raises(ValueError, match=message):
        g.insert_object_tags(text, bboxes)


def test_bad_pairs_and_sizes_raise():
    with pytest.raises(ValueError, match="lie in"):
        g.patch_indices_to_box(0, 1024)
    with pytest.raises(ValueError, match="above and left"):
        g.patch_indices_to_box(40, 33)
    with pytest.raises(ValueError, match="positive ints"):
        g.entities_to_pixel_boxes([], 0, 10)
    with pytest.raises(ValueError, match="positive ints"):
        g.entities_to_pixel_boxes([], 10.0, 10)


def test_entities_to_pixel_boxes():
    _, entities = SNOWMAN_RESULT
    # Hand-derived: x * 640 and y * 480, rounded (halves to even).
    assert g.entities_to_pixel_boxes(entities, 640, 480) == [
        ("a snowman", (12, 21), [(250, 22, 630, 398)]),
        ("a fire", (41, 47), [(110, 8, 310, 428)]),
    ]


def _random_grounded_string(rng: random.Random) -> str:
    words = ["An", " image", " of", " a", " snowman", "  ", " ", ".", ",", " fire", " ünï", " 日本", "\n", "<", ">",
             " a < b", "x>y", "<grounding>", "</image>", "<image>", "</s>", "<s>", "<b>", "<phrase>", "</phrase>"]

    def pair() -> str:
        a, b = rng.randrange(1024), rng.randrange(1024)
        return g.patch_index_token(a) + g.patch_index_token(b)

    def obj() -> str:
        pairs = "</delimiter_of_multi_objects/>".join(pair() for _ in range(rng.randint(1, 3)))
        return f"<object>{pairs}</object>"

    def phrase() -> str:
        pieces = [" a", " big", " dog", "  ", " ", "cat ", " the fire "]
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 3)))
        return f"<phrase>{body}</phrase>"

    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.35:
            parts.append(rng.choice(words))
        elif kind < 0.6:
            parts.append(phrase() + obj())  # a grounded phrase
        elif kind < 0.7:
            parts.append(obj())  # an object without a phrase
        elif kind < 0.8:
            parts.append(phrase())  # a phrase without an object
        elif kind < 0.9:
            parts.append(phrase() + obj()[: rng.randint(1, 40)])  # a truncated object
        else:
            parts.append(rng.choice([" ", "  ", "\t"]) + obj() + " ")  # stray spaces
    return "".join(parts)


def test_post_process_matches_reference_on_random_strings(ref):
    rng = random.Random(1234)
    with_entities = 0
    for _ in range(400):
        text = _random_grounded_string(rng)
        ours = g.post_process_generation(text)
        assert ours == ref.post_process_generation(text), text
        assert g.post_process_generation(text, False) == ref.post_process_generation(text, False)
        with_entities += bool(ours[1])
    assert with_entities > 200  # the generator really exercises entities
