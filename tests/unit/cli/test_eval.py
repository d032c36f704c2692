"""``kosmos2 eval``: one table with a column per mode and a line per file's protocol metric, the same numbers in
``--json``; a bad command is one ``error:`` line and exit status 2, before any model loads."""

import json

import pytest

from kosmos2.cli.eval import main
from kosmos2.training.shapes import write_dataset

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-cli") / "set"
    write_dataset(folder, 3, seed=5)
    return folder


def test_every_protocol_in_two_modes_gives_one_table_and_the_same_numbers_in_json(scenes, tmp_path, capsys):
    out = tmp_path / "scores.json"
    args = ["--tiny", "--modes", "float32,bfloat16", "--json", str(out)]
    for name in ("refexp.jsonl", "labels.jsonl", "coco.json"):
        args += ["--data", str(scenes / name)]
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["float32", "bfloat16"]
    saved = json.loads(out.read_text())
    assert set(saved["modes"]) == {"float32", "bfloat16"}
    protocols = [s["protocol"] for s in saved["modes"]["float32"]]
    assert protocols == ["comprehension", "grounding", "caption", "detection"]  # by file, in --data order
    for line, metric in (("refexp.jsonl comprehension", "acc@0.5"), ("coco.json detection", "AP50")):
        (row,) = [r for r in table if r.startswith(line) and r.split(")")[1].strip().startswith(metric)]
        score = next(s for s in saved["modes"]["bfloat16"] if s["protocol"] == line.split()[1])
        assert float(row.split()[-1]) == pytest.approx(score[metric], abs=5e-4)
        assert 0.0 <= score[metric] <= 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modes", "float64"], "--modes takes a comma-separated list"),
        (["--protocols", "vqa"], "--protocols takes"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--checkpoint", "x"], "give --tiny or --checkpoint, not both"),
        (["--protocols", "detection"], "has nothing to score for detection"),
    ],
)
def test_a_bad_command_is_one_error_line_and_status_2(scenes, capsys, args, message):
    assert main(["--tiny", "--data", str(scenes / "refexp.jsonl"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
