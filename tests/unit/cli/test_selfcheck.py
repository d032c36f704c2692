"""``python -m kosmos2 selfcheck``, offline: the tiny checkpoint against a record made by the reference.

The record has the format of ``kosmos2/expectations/snowman.json`` (the real checkpoint's facts): the same
entries with the same fields, but every value comes from the reference implementation (``transformers``)
run on the tiny checkpoint and an image written here, prepared exactly as the transformers integration
test prepares the snowman (PNG saved as JPEG with PIL's defaults and reopened; float32, greedy, 128 new
tokens, ``output_scores``) and as the model card runs its tasks (the PNG as it is).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kosmos2.cli.common import UsageError
from kosmos2.cli.selfcheck import main
from kosmos2.cli.selfcheck.command import jpeg_round_trip
from kosmos2.cli.selfcheck.compare import Agreement, Produced, agreement, box_iou, compare, compare_case
from kosmos2.cli.selfcheck.expectations import SCORE_SLICES, Case, cases_from, default_expectations
from reference import reference_processor
from reference_model import reference_model
from launch import ROOT

SHARED = ROOT.parent / "shared" / "real-checkpoint" / "snowman-expectations.json"
NEW_TOKENS = 128  # the recorded runs' setting


# ---------------------------------------------------------------------------------------------------
# The record, made by the reference


def _write_image(path: Path) -> Path:
    """A smooth RGB picture with some structure (not noise), as a PNG."""
    y, x = np.mgrid[0:90, 0:130]
    rgb = np.stack([(x * 2) % 256, (y * 3) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)
    rgb[20:60, 40:90] = (250, 250, 250)
    Image.fromarray(rgb).save(path)
    return path


def _reference_run(model, processor, prompts, image, with_scores: bool) -> list[dict]:
    """As ``Kosmos2ModelIntegrationTest.run_example`` in transformers: one record per prompt."""
    inputs = processor(text=prompts, images=image, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                             attention_mask=inputs["attention_mask"], image_embeds=None,
                             image_embeds_position_mask=inputs["image_embeds_position_mask"], use_cache=True,
                             max_new_tokens=NEW_TOKENS, output_scores=True, return_dict_in_generate=True)
    records = []
    for ids, text in zip(out.sequences, processor.batch_decode(out.sequences, skip_special_tokens=True)):
        caption, entities = processor.post_process_generation(text)
        record = {"expected_ids": ids.tolist(),
                  "processed_text": processor.post_process_generation(text, cleanup_and_extract=False),
                  "caption": caption, "entities": json.loads(json.dumps(entities))}
        if with_scores:
            scores = out.scores
            record["scores_1_4_first3x3"] = torch.concat(scores[1:4])[:3, :3].tolist()
            record["scores_last3_last3x3"] = torch.concat(scores[-3:])[-3:, -3:].tolist()
        records.append(record)
    return records


def _fill(entry: dict, record: dict) -> dict:
    """``entry`` with each recorded field replaced by the reference's value (only the fields it has)."""
    return {k: record[k] if k in record and k not in ("prompt", "prompts") else v for k, v in entry.items()}


@pytest.fixture(scope="module")
def image_png(tmp_path_factory) -> Path:
    return _write_image(tmp_path_factory.mktemp("selfcheck") / "picture.png")


@pytest.fixture(scope="module")
def record(tiny_checkpoint: Path, image_png: Path, tmp_path_factory) -> dict:
    """The packaged expectations' structure, every value recomputed by the reference on the tiny checkpoint."""
    template = json.loads(default_expectations().read_text(encoding="utf-8"))
    model, processor = reference_model(tiny_checkpoint), reference_processor(tiny_checkpoint, padding_side="left")
    png = Image.open(image_png)
    jpeg_path = tmp_path_factory.mktemp("jpeg") / "new_image.jpg"
    png.save(jpeg_path)  # the integration test: image.save("new_image.jpg"); Image.open("new_image.jpg")
    jpeg = Image.open(jpeg_path)
    data = copy.deepcopy(template)
    data["checkpoint"], data["image"] = str(tiny_checkpoint), {"repo": "local", "repo_file": image_png.name}
    singles = {}
    for i, entry in enumerate(template["integration_test"]):
        if "prompts" in entry:
            # The real record says left padding gives the unbatched texts; on random tiny weights it does not
            # (the reference's decode positions count the left pads), so the rows are recorded as they come.
            rows = _reference_run(model, processor, entry["prompts"], [jpeg] * len(entry["prompts"]), False)
            data["integration_test"][i] = {**entry, "expected_rows": rows}
        else:
            singles[entry["prompt"]] = _reference_run(model, processor, entry["prompt"], jpeg, True)[0]
            data["integration_test"][i] = _fill(entry, singles[entry["prompt"]])
    for i, entry in enumerate(template["model_card"]):
        data["model_card"][i] = _fill(entry, _reference_run(model, processor, entry["prompt"], png, False)[0])
    return data


def _write(data: dict, folder: Path, name: str = "record.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def _selfcheck(capsys, tiny: Path, image: Path, expectations: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--checkpoint", str(tiny), "--image", str(image), "--expectations", str(expectations),
                 "--device", "cpu", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _table_row(out: str, case: str) -> str:
    rows = [line for line in out.splitlines() if line.startswith((f"| {case} |", f"| {case} (batch"))]
    assert len(rows) == 1, out
    return rows[0]


def _entry(data: dict, name: str) -> dict:
    return next(e for e in data["integration_test"] + data["model_card"] if e.get("name", e.get("task")) == name)


# ---------------------------------------------------------------------------------------------------
# The command on the tiny checkpoint


def test_reference_record_passes_in_float32(capsys, tiny_checkpoint, image_png, record, tmp_path):
    code, out, err = _selfcheck(capsys, tiny_checkpoint, image_png, _write(record, tmp_path), "--modes", "float32")
    assert code == 0, out
    assert "float32: 10/10 cases match the recorded outputs exactly." in out
    for case in cases_from(record):
        assert "| match" in _table_row(out, case.name), out
    assert "scores within" in _table_row(out, "brief")  # the score slices were compared
    assert "scores within" in _table_row(out, "detailed")


def test_other_modes_are_compared_with_float32(capsys, tiny_checkpoint, image_png, record, tmp_path):
    code, out, _ = _selfcheck(capsys, tiny_checkpoint, image_png, _write(record, tmp_path),
                              "--cases", "referring expression generation")
    assert code == 0, out  # the exit status follows float32 only
    header = out.splitlines()[1]
    assert "bfloat16 vs float32" in header and "int8 vs float32" in header
    row = _table_row(out, "referring expression generation")
    assert row.count("(1/1 matched)") == 2, row  # the prompt's own entity, in both modes
    assert "tokens" in row
    for mode in ("float32", "bfloat16", "int8"):  # each mode's own timing line
        assert f"\n{mode}: loaded in " in out and "tokens/s" in out, out


def test_a_changed_token_id_fails_and_says_where(capsys, tiny_checkpoint, image_png, record, tmp_path):
    changed = copy.deepcopy(record)
    ids = _entry(changed, "brief")["expected_ids"]
    position = 71 + 2  # the third new token (the prompt is 71 ids)
    ids[position] = ids[position] + 1
    code, out, _ = _selfcheck(capsys, tiny_checkpoint, image_png, _write(changed, tmp_path),
                              "--modes", "float32", "--cases", "brief")
    assert code == 1
    assert "MISMATCH (1)" in _table_row(out, "brief")
    want, got = ids[position], ids[position] - 1
    assert f"brief: ids differ at position {position} (new token 3): expected {want}, got {got}" in out


def test_a_changed_box_fails_and_says_which_entity(capsys, tiny_checkpoint, image_png, record, tmp_path):
    changed = copy.deepcopy(record)
    entity = _entry(changed, "referring expression generation")["entities"][0]
    assert entity[0] == "It"  # the prompt's own <phrase> It</phrase><object>…</object>
    entity[2][0][0] += 1 / 32
    code, out, _ = _selfcheck(capsys, tiny_checkpoint, image_png, _write(changed, tmp_path),
                              "--modes", "float32", "--cases", "referring expression generation")
    assert code == 1
    assert "MISMATCH (1)" in _table_row(out, "referring expression generation")
    assert "referring expression generation: entity 1 ('It'): boxes expected" in out


@pytest.mark.parametrize("delta, code", [(1e-3, 1), (1e-6, 0)])
def test_score_slices_are_compared_within_the_tolerance(capsys, tiny_checkpoint, image_png, record, tmp_path,
                                                        delta, code):
    changed = copy.deepcopy(record)
    _entry(changed, "brief")["scores_last3_last3x3"][1][2] += delta
    got, out, _ = _selfcheck(capsys, tiny_checkpoint, image_png, _write(changed, tmp_path),
                             "--modes", "float32", "--cases", "brief")
    assert got == code, out
    if code:
        assert "brief: scores_last3_last3x3: max |difference| 1.00e-03 > 0.0001 at [1][2]" in out


def test_the_jpeg_round_trip_is_the_integration_tests(image_png, tmp_path):
    png = Image.open(image_png)
    png.save(tmp_path / "new_image.jpg")
    assert np.array_equal(np.asarray(jpeg_round_trip(png)), np.asarray(Image.open(tmp_path / "new_image.jpg")))


# ---------------------------------------------------------------------------------------------------
# Offline and bad arguments: one line, exit status 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_cli(args: list[str], env_update: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(ROOT)}, **env_update)
    return subprocess.run([sys.executable, "-m", "kosmos2", "selfcheck", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


# the unreachable endpoint waits out huggingface_hub's retries (1 + 2 + 4 + 8 + 8 s): with the e2e tests
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE=1", pytest.param("unreachable endpoint", marks=pytest.mark.e2e)])
def test_without_the_hub_it_says_so_in_one_line(tmp_path, how):
    env = {"HF_HUB_OFFLINE": "1"} if how == "HF_HUB_OFFLINE=1" else {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    done = _run_cli([], env, tmp_path)
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs the Hugging Face hub" in lines[0] and "--checkpoint" in lines[0] and "--image" in lines[0]


def test_with_an_image_but_no_checkpoint_offline_it_says_so_in_one_line(tmp_path, image_png):
    done = _run_cli(["--image", str(image_png)], {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert done.returncode == 2, done
    assert len(done.stderr.splitlines()) == 1 and "microsoft/kosmos-2-patch14-224" in done.stderr, done.stderr


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--modes", "bfloat16"], "--modes must start with float32"),
    (["--modes", "float32,float64"], "unknown mode 'float64'"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--cases", "nope"], "unknown case 'nope'"),
    (["--atol", "-1"], "--atol must be >= 0"),
    (["--expectations", "/nonexistent/record.json"], "expectations file not found"),
    (["--checkpoint", "/nonexistent/folder", "--image", "IMAGE"], "Checkpoint folder not found"),
    (["--checkpoint", "CHECKPOINT", "--image", "/nonexistent/snowman.png"], "No such image file"),
])
def test_bad_arguments_give_one_error_line(capsys, tiny_checkpoint, image_png, args, message):
    args = [str(image_png) if a == "IMAGE" else str(tiny_checkpoint) if a == "CHECKPOINT" else a for a in args]
    capsys.readouterr()
    assert main([*args, "--device", "cpu"] if "--device" not in args else args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and message in err, err


def _without_image(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "image"}


@pytest.mark.parametrize("make", [lambda packaged: {"integration_test": [{"name": "x"}]}, _without_image])
def test_a_malformed_expectations_file_is_one_error_line(capsys, tmp_path, make):
    path = _write(make(json.loads(default_expectations().read_text(encoding="utf-8"))), tmp_path)
    assert main(["--expectations", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: malformed expectations file"), err


# ---------------------------------------------------------------------------------------------------
# The packaged facts and the pure comparison


def test_the_packaged_expectations_are_the_recorded_facts():
    data = json.loads(default_expectations().read_text(encoding="utf-8"))
    assert default_expectations().stat().st_size < 64_000  # facts, not weights
    cases = cases_from(data)
    assert [c.name for c in cases][:3] == ["brief", "detailed", "batch_left_padded"]
    assert len(cases) == 10 and sum(c.jpeg for c in cases) == 3
    brief = cases[0].expected[0]
    assert brief["caption"] == "An image of a snowman warming himself by a fire."
    assert len(brief["ids"]) == 92 and set(SCORE_SLICES) <= set(brief)
    assert cases[2].prompts == ("<grounding>Describe this image in detail:", "<grounding>An image of")
    assert cases[2].expected == tuple({k: c.expected[0][k] for k in ("processed_text", "caption", "entities")}
                                      for c in (cases[1], cases[0]))
    if SHARED.is_file():  # the project's shared copy, where it exists (not in CI)
        assert data == json.loads(SHARED.read_text(encoding="utf-8"))


def _produced(ids=(0, 5, 6, 2), entities=(("a cat", (0, 5), [(0.0, 0.0, 0.5, 0.5)]),), scores=None) -> Produced:
    entities = json.loads(json.dumps(list(entities)))
    return Produced(list(ids), list(ids[2:]), "<grounding> a cat", "a cat", entities, scores or {})


def test_compare_reports_each_kind_of_mismatch():
    got = _produced().record()
    assert compare({"ids": [0, 5, 6, 2], "caption": "a cat", "entities": got["entities"]}, got) == []
    assert compare({"ids": [0, 5, 7, 2]}, got, prompt_length=2) == [
        "ids differ at position 2 (new token 1): expected 7, got 6 (lengths 4 and 4)"]
    assert compare({"ids": [0, 5, 6]}, got)[0].startswith("ids differ at position 3: expected the end, got 2")
    assert "caption differs at character 2" in compare({"caption": "a dog"}, got)[0]
    assert compare({"entities": [["a cat", [0, 5], [[0.0, 0.0, 0.5, 0.25]]]]}, got) == [
        "entity 1 ('a cat'): boxes expected [[0.0, 0.0, 0.5, 0.25]], got [[0.0, 0.0, 0.5, 0.5]]"]
    assert compare({"entities": [["a dog", [0, 5], [[0.0, 0.0, 0.5, 0.5]]]]}, got) == [
        "entity 1: phrase expected 'a dog', got 'a cat'"]
    assert compare({"entities": []}, got) == ["entities: expected 0, got 1 (extra: 'a cat')"]
    assert compare({"scores_1_4_first3x3": [[1.0]]}, got) == ["scores_1_4_first3x3: no scores were produced"]
    scored = _produced(scores={"scores_1_4_first3x3": [[1.0, float("nan")]]}).record()
    assert "max |difference|" in compare({"scores_1_4_first3x3": [[1.0, 2.0]]}, scored)[0]  # NaN never matches
    with pytest.raises(ValueError, match="unknown recorded field"):
        compare({"logits": []}, got)


def test_compare_case_prefixes_batch_rows():
    case = Case("b", "integration test", True, ("p", "q"), ({"caption": "a cat"}, {"caption": "a dog"}))
    assert compare_case(case, [_produced(), _produced()]) == [
        "row 2: caption differs at character 2: expected …'a dog'…, got …'a cat'…"]
    assert compare_case(case, [_produced()]) == ["1 rows produced for 2 prompts"]


def test_box_iou():
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 1, 1), (0.5, 0, 1.5, 1)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0.5, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5)) == 1.0


def test_agreement_matches_entities_by_phrase():
    ref = _produced(ids=(0, 1, 5, 6, 7), entities=[("a cat", (0, 5), [(0, 0, 1, 1)]), ("a dog", (6, 11), [(0, 0, 1, 1)])])
    same = agreement([ref], [ref])
    assert same == Agreement(None, (1.0, 1.0), 2) and same.text(False) == "tokens identical; IoU 1.00 (2/2 matched)"
    other = _produced(ids=(0, 1, 5, 9), entities=[("a dog", (6, 11), [(0.5, 0, 1.5, 1)])])
    found = agreement([ref], [other])
    assert found.first_difference == (0, 1) and found.ious == pytest.approx((1 / 3,))
    assert found.text(False) == "tokens differ from new token 2; IoU 0.33 (1/2 matched)"
    assert agreement([ref, ref], [ref, other]).text(True).startswith("tokens differ from new token 2 of row 2")


def test_unknown_case_names_are_a_usage_error():
    from kosmos2.cli.selfcheck.expectations import select_cases

    cases = cases_from(json.loads(default_expectations().read_text(encoding="utf-8")))
    assert [c.name for c in select_cases(cases, "brief, grounded VQA")] == ["brief", "grounded VQA"]
    with pytest.raises(UsageError, match="unknown case 'x'"):
        select_cases(cases, "brief,x")


def test_two_integration_entries_with_one_name_are_refused():
    entry = {"name": "brief", "prompt": "<grounding>An image of", "expected_ids": [0], "expected_text": "x",
             "expected_processed_text": "x", "expected_caption": "x", "expected_entities": []}
    with pytest.raises(UsageError, match="case names must be unique"):
        cases_from({"integration_test": [entry, dict(entry)]})
