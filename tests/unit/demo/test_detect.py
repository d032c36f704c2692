"""Scored grounding: box scores from the raw logits, every instance of a phrase (``detect``), NMS and
filters, the density map, against the reference and hand-built distributions."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from PIL import Image

from kosmos2 import Kosmos2ForConditionalGeneration, detection, grounding
from kosmos2.demo import draw, view
from kosmos2.demo.detect import Detection, detect_many
from kosmos2.demo.inputs import InputError
from kosmos2.demo.loading import ModelHolder
from kosmos2.demo.generate import generate_each
from kosmos2.demo.results import build_result
from kosmos2.demo.settings import DetectionSettings, GenerationSettings
from kosmos2.demo.tasks import build_request
from kosmos2.serving import Engine, locate
from launch import ROOT
from reference_model import pixel_values, prompt_inputs, reference_model, token_id

GRID = grounding.GRID
CELLS = grounding.NUM_PATCH_INDEX_TOKENS


def cell(row: int, col: int) -> int:
    return row * GRID + col


def peaks(*weights: tuple[int, float]) -> list[float]:
    """A distribution over cells with the given (cell, probability) entries, 0 elsewhere."""
    probs = [0.0] * CELLS
    for c, p in weights:
        probs[c] = p
    return probs


# ----------------------------------------------------------------------------- pure parts


def test_top_cells_keeps_the_likeliest_above_the_floor():
    probs = peaks((5, 0.5), (9, 0.3), (700, 0.0005), (3, 0.3))
    assert detection.top_cells(probs, 2) == [(5, 0.5), (3, 0.3)]  # ties: lower cell first
    assert detection.top_cells(probs, 10) == [(5, 0.5), (3, 0.3), (9, 0.3)]  # 700 is under the floor


def test_second_cells_must_be_at_or_below_and_right_of_the_first():
    first = cell(10, 10)
    assert detection.can_close(first, first)
    assert detection.can_close(first, cell(10, 20)) and detection.can_close(first, cell(20, 10))
    assert not detection.can_close(first, cell(9, 20)) and not detection.can_close(first, cell(20, 9))
    seconds = peaks((cell(5, 5), 0.9), (cell(20, 20), 0.06), (cell(12, 11), 0.04))
    got = detection.candidates_from(first, 0.5, seconds, per_first=3)
    assert [(c.second, c.score) for c in got] == [(cell(20, 20), 0.5 * 0.06), (cell(12, 11), 0.5 * 0.04)]


def test_two_separated_peaks_give_two_boxes_and_a_peak_with_its_neighbours_one():
    cup = detection.Candidate(cell(2, 2), cell(10, 10), 0.5, 0.8)  # score 0.4
    cup_neighbour = detection.Candidate(cell(2, 3), cell(10, 10), 0.3, 0.7)  # score 0.21, IoU ~0.89 with cup
    other_cup = detection.Candidate(cell(20, 20), cell(28, 28), 0.2, 0.9)  # score 0.18, far away
    kept = detection.select([cup_neighbour, other_cup, cup], threshold=0.1, max_instances=10, iou_limit=0.5)
    assert kept == [cup, other_cup]
    assert detection.select([cup, cup_neighbour, other_cup], 0.1, 10, iou_limit=0.95) == [cup, cup_neighbour, other_cup]
    assert detection.select([cup, other_cup], threshold=0.2, max_instances=10, iou_limit=0.5) == [cup]
    assert detection.select([cup, other_cup], threshold=0.0, max_instances=1, iou_limit=0.5) == [cup]


def test_nms_keeps_a_box_whose_iou_with_a_kept_one_equals_the_limit_and_drops_one_above_it():
    # cells are 1/32 wide: these boxes' areas and IoUs are exact binary fractions (one row: whole cells)
    wide = detection.Candidate(cell(0, 0), cell(0, 3), 0.5, 0.5)  # 4 cells x 1; score 0.25
    half = detection.Candidate(cell(0, 0), cell(0, 1), 0.5, 0.4)  # its left 2 cells; score 0.2; IoU 0.5
    assert detection.iou(wide.box, half.box) == 0.5
    assert detection.non_max_suppression([half, wide], iou_limit=0.5) == [wide, half]  # "more than" the limit
    assert detection.non_max_suppression([half, wide], iou_limit=0.4999) == [wide]


def test_nms_at_iou_zero_keeps_disjoint_and_touching_boxes_and_drops_any_overlap():
    # boxes within one row of cells span whole cells (corner-to-corner pairs span cell centres)
    left = detection.Candidate(cell(0, 0), cell(0, 1), 0.5, 0.5)
    touching = detection.Candidate(cell(0, 2), cell(0, 3), 0.5, 0.4)  # shares left's right edge
    far = detection.Candidate(cell(20, 20), cell(20, 25), 0.5, 0.3)
    overlapping = detection.Candidate(cell(0, 1), cell(0, 2), 0.5, 0.2)  # one cell in common with left
    assert detection.iou(left.box, touching.box) == 0.0
    got = detection.non_max_suppression([far, overlapping, touching, left], iou_limit=0.0)
    assert got == [left, touching, far]


def test_a_score_exactly_at_the_threshold_is_kept_and_one_just_below_is_not():
    at = detection.Candidate(cell(0, 0), cell(1, 1), 0.5, 0.5)  # 0.25, exact
    below = detection.Candidate(cell(20, 20), cell(25, 25), 0.5, 0.4999)
    assert detection.select([at, below], threshold=0.25, max_instances=10, iou_limit=0.5) == [at]


@pytest.mark.parametrize(("score", "shown"), [(0.87, "0.87"), (0.01, "0.01"), (0.0099, "9.9e-3"),
                                               (4.3e-5, "4.3e-5"), (1.25e-12, "1.2e-12"), (0.0, "0.00")])
def test_a_small_score_is_shown_with_two_significant_digits_not_as_zero(score, shown):
    assert draw.format_score(score) == shown
    assert draw.box_label("a cup", score) == f"a cup · {shown}"


def _found(scores: list[float]) -> Detection:
    candidates = tuple(detection.Candidate(cell(0, 2 * k), cell(0, 2 * k + 1), s, 1.0) for k, s in enumerate(scores))
    return Detection(build_request("detect", Image.new("RGB", (64, 64)), "a cup"), ("a cup",), (candidates,), 0.5)


def test_a_detect_that_keeps_no_box_gives_the_best_score_and_says_to_lower_the_threshold():
    found = _found([4.3e-5, 2e-5])
    timing = found.result(DetectionSettings(threshold=0.1)).timing_text()
    assert timing == ("0 boxes kept of 2 candidates in 0.50 s · the best scores 4.3e-5, under the box threshold 0.1: "
                      "lower it to see boxes")
    assert found.result(DetectionSettings(threshold=0.0)).timing_text() == "2 boxes kept of 2 candidates in 0.50 s"


def test_a_refiltered_detect_says_so_instead_of_timing_the_filter():
    timing = _found([0.5, 0.2]).result(DetectionSettings(threshold=0.3), refiltered=True).timing_text()
    assert timing == "1 box kept of 2 candidates, re-filtered without the model (which took 0.50 s)"


def test_iou_by_hand():
    assert detection.iou((0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.0625 / (0.5 - 0.0625))
    assert detection.iou((0.0, 0.0, 0.1, 0.1), (0.5, 0.5, 0.6, 0.6)) == 0.0


def test_density_map_sums_the_scores_of_the_boxes_covering_each_half_cell():
    # cells (0,0)-(0,0): the whole first cell = half-cells [0,2) x [0,2); cells (0,0)-(1,1): centre to centre
    # = half-cells [1,3) x [1,3) (see grounding.patch_indices_to_box)
    a = detection.Candidate(cell(0, 0), cell(0, 0), 0.5, 0.5)  # 0.25
    b = detection.Candidate(cell(0, 0), cell(1, 1), 0.5, 0.25)  # 0.125
    heat = detection.density_map([a, b])
    assert len(heat) == 2 * GRID and all(len(row) == 2 * GRID for row in heat)
    assert heat[0][0] == pytest.approx(0.25 / 0.375) and heat[1][1] == pytest.approx(1.0)
    assert heat[2][2] == pytest.approx(0.125 / 0.375) and heat[3][3] == 0.0
    assert sum(map(sum, heat)) == pytest.approx((4 * 0.25 + 4 * 0.125) / 0.375)
    assert detection.density_map([]) == [[0.0] * (2 * GRID)] * (2 * GRID)


def test_box_scores_follow_the_entities_of_a_text():
    text = ("<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>"
            " by<object><patch_index_0001><patch_index_0002></delimiter_of_multi_objects/><patch_index_0003>"
            "<patch_index_0004></object>")
    logprobs = [math.log(0.5), math.log(0.8), None, math.log(0.9), math.log(0.4), math.log(0.5)]
    assert grounding.box_scores(text, logprobs) == [[pytest.approx(0.4)], [None], [pytest.approx(0.2)]]
    ids = [0, 44, 3, 9, 100, 44, 7, 101]  # 3 = </image>; 100, 101 (and 44 only after </image>) are locations
    logprobs = [None, None, None, None, -1.0, -0.5, None, -2.0]
    assert grounding.location_logprobs(ids, logprobs, {44, 100, 101}, image_end_id=3) == [-1.0, -0.5, -2.0]
    with pytest.raises(ValueError, match="patch-index tokens"):
        grounding.box_scores(text, [math.log(0.5)])


def test_scores_travel_with_the_entities_to_json_page_and_png():
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    request = build_request("ground", image, "a snowman")
    text = "<grounding><phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>"
    result = build_result(request, [text], done=True,
                          patch_logprobs=[[math.log(0.5), math.log(0.8)]])
    (entity,) = result.entities
    assert entity.scores == [pytest.approx(0.4)] and result.entities_json()[0]["score"] == pytest.approx(0.4)
    assert "a snowman · 0.40" in view.render(view.image_data_uri(image), result)
    with_score = draw.annotate(image, result.annotations())
    without = draw.annotate(image, [draw.Annotation("a snowman", entity.colour, entity.pixel_boxes)])
    assert with_score.tobytes() != without.tobytes()  # the label is longer: " · 0.40" is drawn


# ----------------------------------------------------------------------------- against the reference


@pytest.fixture(scope="module")
def pair(make_checkpoint):
    folder = make_checkpoint("model_a")
    return folder, Kosmos2ForConditionalGeneration.from_pretrained(folder), reference_model(folder)


def _reference_next(ref, ids: list[int], pixels: torch.Tensor) -> torch.Tensor:
    """The reference's softmax over the vocabulary for the token after ``ids`` (one unpadded row)."""
    inputs = prompt_inputs_for(ids)
    with torch.no_grad():
        logits = ref(pixel_values=pixels, **inputs).logits[0, -1]
    return logits.float().softmax(dim=-1)


def prompt_inputs_for(ids: list[int]) -> dict[str, torch.Tensor]:
    ids_t = torch.tensor([ids])
    slots = torch.zeros_like(ids_t)
    slots[0, 2:66] = 1
    return {"input_ids": ids_t, "attention_mask": torch.ones_like(ids_t), "image_embeds_position_mask": slots}


def test_locate_equals_the_reference_run_alone_per_candidate(pair):
    folder, ours, ref = pair
    location_ids = torch.tensor([token_id(folder, grounding.patch_index_token(i)) for i in range(CELLS)])
    grounding_id, phrase, phrase_end, obj = (token_id(folder, t) for t in ("<grounding>", "<phrase>", "</phrase>", "<object>"))
    prompts = [[grounding_id, phrase, 10, 20, phrase_end, obj], [grounding_id, phrase, 30, phrase_end, obj]]
    batch = prompt_inputs(folder, prompts)
    pixels = pixel_values(2, ours.config.vision_config.image_size)
    engine = Engine(ours)
    located = locate(engine, engine.rows(pixels, batch["input_ids"], batch["image_embeds_position_mask"],
                                      batch["attention_mask"]), location_ids, candidates=4, floor=0.0)
    for r, row in enumerate(located):
        ids = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
        want_first = _reference_next(ref, ids, pixels[r:r + 1])[location_ids]
        assert torch.allclose(row.first, want_first, atol=1e-5)
        assert row.tried == want_first.topk(4).indices.tolist()
        for k, c in enumerate(row.tried):  # the batched step = the reference on prompt + that first cell, alone
            want_second = _reference_next(ref, ids + [int(location_ids[c])], pixels[r:r + 1])[location_ids]
            assert torch.allclose(row.second[k], want_second, atol=1e-5)


def test_served_box_scores_are_the_reference_softmax_at_the_location_steps(pair):
    folder, _, ref = pair
    loaded = ModelHolder(str(folder)).get()
    image = Image.new("RGB", (64, 64), (90, 160, 60))
    request = build_request("detect", image, "a cat")  # ends in <object>: the next two tokens are a box
    streams = loaded.batcher.submit_batch(**loaded.processor(text=list(request.prompts), images=[image],
                                                             return_tensors="pt"), max_new_tokens=2)
    new = streams[0].result(timeout=60)
    batch = loaded.processor(text=list(request.prompts), images=[image], return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    with torch.no_grad():
        logits = ref(pixel_values=batch["pixel_values"], input_ids=torch.tensor([ids + new]),
                     image_embeds_position_mask=torch.nn.functional.pad(batch["image_embeds_position_mask"], (0, 2)),
                     attention_mask=torch.ones(1, len(ids) + 2, dtype=torch.long)).logits[0].float()
    want = [float(logits[len(ids) - 1 + k].log_softmax(-1)[new[k]]) for k in range(2)]
    assert streams[0].logprobs == pytest.approx(want, abs=1e-4)


# ----------------------------------------------------------------------------- the task


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return ModelHolder(str(tiny_checkpoint)).get()


def test_detect_scores_every_kept_box_and_refilters_without_the_model(loaded, monkeypatch):
    image = Image.new("RGB", (80, 60), (30, 60, 200))
    requests = [build_request("detect", image, "a cat\na dog"), build_request("detect", image, "a cup")]
    results = detect_many(loaded, requests, DetectionSettings(threshold=0.0, max_instances=5))
    assert [len(r.detection.phrases) for r in results] == [2, 1]
    for result in results:
        for e in result.entities:
            assert len(e.boxes) == len(e.scores) <= 5 and e.scores == sorted(e.scores, reverse=True)
            assert all(0 < s <= 1 for s in e.scores)
    calls = []
    monkeypatch.setattr(Engine, "prepare", lambda *a, **k: calls.append(1))
    strict = results[0].detection.result(DetectionSettings(threshold=0.0, max_instances=1))
    assert all(len(e.boxes) == 1 for e in strict.entities) and calls == []
    best = max(c.score for c in results[0].detection.candidates[0])
    assert not any(e.row == 0 for e in results[0].detection.result(DetectionSettings(threshold=best + 1e-9)).entities)


def test_one_batch_for_several_images_equals_each_alone(loaded):
    a, b = Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))
    settings = DetectionSettings(threshold=0.0)
    together = detect_many(loaded, [build_request("detect", a, "a cat"), build_request("detect", b, "a cat")], settings)
    alone = [detect_many(loaded, [build_request("detect", im, "a cat")], settings)[0] for im in (a, b)]
    for x, y in zip(together, alone):
        assert [c.first for c in x.detection.candidates[0]] == [c.first for c in y.detection.candidates[0]]
        assert [c.score for c in x.detection.candidates[0]] == pytest.approx([c.score for c in y.detection.candidates[0]],
                                                                              rel=1e-4)


def test_generated_boxes_get_scores_in_every_task(loaded):
    image = Image.new("RGB", (64, 64), (120, 140, 160))
    result = generate_each(loaded, [build_request("caption", image)], GenerationSettings(max_new_tokens=8))[0]
    assert all(len(e.scores) == len(e.boxes) for e in result.entities)


@pytest.mark.parametrize("values, message", [
    ({"threshold": 1.5}, "Box threshold must be between 0 and 1"),
    ({"threshold": -0.1}, "Box threshold must be between 0 and 1"),
    ({"candidates": 33}, "Candidate cells must be between 1 and 32"),
    ({"max_instances": 0}, "Max boxes per phrase must be between 1 and 32"),
])
def test_bad_detection_settings_are_refused_with_their_label(values, message):
    with pytest.raises(InputError, match=message):
        DetectionSettings.from_user(**values)


def test_detect_needs_phrases():
    with pytest.raises(InputError, match="Phrases are empty"):
        build_request("detect", Image.new("RGB", (8, 8)), " \n ")


def test_cli_detect_prints_scored_boxes_as_json():
    proc = subprocess.run([sys.executable, "-m", "kosmos2", str(ROOT / "assets" / "coffee.jpg"), "--task", "detect",
                           "--text", "a cup", "--threshold", "0", "--max-instances", "3", "--json", "--tiny"],
                          capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert proc.returncode == 0, proc.stderr
    (entity,) = json.loads(proc.stdout)["entities"]
    assert entity["phrase"] == "a cup" and 1 <= len(entity["boxes"]) <= 3 and len(entity["scores"]) == len(entity["boxes"])
    assert entity["score"] == max(entity["scores"])
    bad = subprocess.run([sys.executable, "-m", "kosmos2", str(ROOT / "assets" / "coffee.jpg"), "--task", "detect",
                          "--text", "a cup", "--threshold", "2", "--tiny"], capture_output=True, text=True, cwd=ROOT,
                         timeout=180)
    assert bad.returncode == 2 and bad.stderr == "error: --threshold must be between 0 and 1, got 2.0\n"


def test_the_phrase_of_a_detect_prompt():
    from kosmos2.demo.detect import detect_phrase

    assert detect_phrase("<grounding><phrase> a red cup</phrase><object>") == "a red cup"
    with pytest.raises(ValueError, match="not a detect prompt"):
        detect_phrase("<grounding><phrase> a red cup</phrase>")
