"""The protocols' glue, scored by an oracle that answers with the true boxes (as the model's text, through the
task runner's own parsing): every protocol must then score perfectly, pycocotools included, and a model whose
boxes are all moved must score nothing; so frames, scales, category ids and COCO's xywh are right."""

import json

import pytest

from kosmos2 import grounding
from kosmos2.demo.results import build_result
from kosmos2.evaluation import evaluate, read_benchmark
from kosmos2.evaluation import run as run_module
from kosmos2.training.shapes import write_dataset

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval") / "set"
    write_dataset(folder, 8, seed=3, exif_share=0.5)
    return folder


def oracle(folder, moved=False):
    """A stand-in for run_tasks that writes each phrase's true boxes (from coco.json; or ``moved`` to the far
    edge of the image's other half) after each prompt, keyed by the image as the runner loaded it (EXIF applied)."""
    coco = json.loads((folder / "coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    truth = {}
    for image in coco["images"]:
        shown = grounding_image(folder / image["file_name"])
        boxes = truth.setdefault(shown.tobytes(), {})
        for a in coco["annotations"]:
            if a["image_id"] == image["id"]:
                x, y, w, h = a["bbox"]
                W, H = image["width"], image["height"]
                move = (1 - (x + w) / W if x + w / 2 < W / 2 else -x / W) if moved else 0.0  # to the far edge
                box = (x / W + move, y / H, (x + w) / W + move, (y + h) / H)
                boxes.setdefault(names[a["category_id"]], []).append(box)

    def run_tasks(loaded, task, requests, settings):
        results = []
        for request in requests:
            known = truth[request.image.tobytes()]
            texts = []
            for prompt in request.prompts:
                if task.name == "caption":
                    parts = [f"<phrase> {p}</phrase>{grounding.object_markup(b)}" for p, b in known.items()]
                    texts.append(prompt + " and".join(parts) + ".")
                    continue
                prompt = prompt.removesuffix("<object>")  # detect's prompt opens the box
                phrase = prompt.split("<phrase>")[-1].split("</phrase>")[0].strip()
                boxes = known.get(phrase if phrase in known else phrase.replace("the ", "a ", 1))
                texts.append(prompt + (grounding.object_markup(boxes) if boxes else ""))
            results.append(build_result(request, texts, done=True))
        return results

    return run_tasks


def grounding_image(path):
    from kosmos2.demo.inputs import load_image

    return load_image(path)


def scores_of(folder, monkeypatch, moved=False):
    monkeypatch.setattr(run_module, "run_tasks", oracle(folder, moved))
    out = {}
    for name in ("refexp.jsonl", "labels.jsonl", "coco.json"):
        bench = read_benchmark(folder / name, folder)
        assert not bench.problems
        for s in evaluate(None, bench, run_module.PROTOCOLS):
            out[s.protocol] = s.metrics
    return out


def test_an_oracle_scores_perfectly_on_every_protocol(scenes, monkeypatch):
    scores = scores_of(scenes, monkeypatch)
    assert set(scores) == {"comprehension", "grounding", "detection", "caption"}
    assert scores["grounding"]["R@1"] == 1.0 and scores["grounding"]["R@1 by score"] == 1.0
    assert scores["caption"]["entity recall"] == 1.0
    assert scores["detection"]["AP50"] == pytest.approx(1.0)  # pycocotools' own AP, on the grid's boxes
    assert 0.5 < scores["detection"]["mAP"] <= 1.0  # the 32-cell grid costs some IoU above 0.5


def test_the_simple_referring_expressions_are_all_found_by_the_oracle(scenes, monkeypatch):
    monkeypatch.setattr(run_module, "run_tasks", oracle(scenes))
    bench = read_benchmark(scenes / "refexp.jsonl", scenes)
    bench.comprehension = [q for q in bench.comprehension if " of " not in q.phrase and "above" not in q.phrase
                           and "below" not in q.phrase]  # fmt: skip
    (score,) = evaluate(None, bench, ["comprehension"])
    assert score.metrics["acc@0.5"] == 1.0 and score.count == len(bench.comprehension) > 0


def test_boxes_moved_across_the_image_score_nothing(scenes, monkeypatch):
    scores = scores_of(scenes, monkeypatch, moved=True)
    assert scores["grounding"]["R@1"] < 0.2 and scores["caption"]["entity recall"] < 0.2
    assert scores["detection"]["AP50"] < 0.2
