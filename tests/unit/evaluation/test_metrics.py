"""The protocols' measures on hand-made boxes: the first box of the right phrase, recall at k over any true box,
and one-to-one entity matching (IoU values worked out by hand)."""

import pytest

from kosmos2.evaluation import found_at, match_entities, phrase_boxes

BOX = (0.0, 0.0, 10.0, 10.0)
HALF = (0.0, 0.0, 10.0, 5.0)  # IoU with BOX: 50 / 100 = 0.5, a hit
THIRD = (0.0, 0.0, 10.0, 4.0)  # IoU 0.4, a miss
FAR = (20.0, 20.0, 30.0, 30.0)


def test_phrase_boxes_are_those_of_the_first_entity_with_the_phrase_and_boxes():
    entities = [("a cat", [FAR]), (" a dog", []), ("a dog ", [HALF, BOX]), ("a dog", [FAR])]
    assert phrase_boxes(entities, "a dog") == [HALF, BOX]
    assert phrase_boxes(entities, "a bird") == []  # the protocol's miss: no box at all


def test_found_at_counts_only_the_first_k_boxes_at_iou_one_half():
    assert found_at([HALF], [BOX], 1)
    assert not found_at([THIRD], [BOX], 1)
    assert not found_at([FAR, HALF], [BOX], 1) and found_at([FAR, HALF], [BOX], 2)
    assert found_at([FAR], [BOX, FAR], 1)  # any true box of the phrase counts
    assert not found_at([], [BOX], 10)


def test_match_entities_pairs_each_true_box_with_one_predicted_box_of_its_phrase():
    truth = [("a red circle", [BOX, FAR]), ("a blue square", [BOX])]
    predicted = [("a red circle", [HALF]), ("a red circle", [HALF]), ("a blue square", [FAR]), ("a green one", [BOX])]
    found, total, ious = match_entities(predicted, truth)
    # the red circle's BOX is found by one HALF (IoU 0.5); the second HALF cannot take FAR; the square's is missed
    assert (found, total) == (1, 3)
    assert ious == pytest.approx([0.5])
    found, total, _ = match_entities([("a red circle", [BOX, FAR])], truth)
    assert (found, total) == (2, 3)
