"""kosmos2-shapes: KOSMOS-2's architecture scaled down (about 2.9 M parameters, 11.6 MB in float32) and trained
here from scratch on synthetic shapes: meant as the app's offline model and the accuracy tests' oracle, once it
meets issue 26's targets (docs/fine-tuning.md has where it stands).

``python -m kosmos2.training.shapes_model OUT`` rebuilds it: it writes the data sets (``kosmos2 shapes``), a
start checkpoint (its own small tokenizer with the tags and the 1024 patch-index tokens; weights from
:func:`~kosmos2.training.start.initial_state_dict`), runs the curriculum's ``kosmos2 train`` commands (one
shape per scene first, then scenes of one to four), copies the model's files to OUT, scores it on held-out
scenes with ``kosmos2 eval`` and writes its model card. Each command is printed before it runs; a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import Kosmos2Config
from ..tiny import CORPUS, build_tokenizer, tiny_config, write_tiny_checkpoint
from .shapes import COLOURS, KINDS
from .start import initial_state_dict

TEXT = {"embed_dim": 192, "layers": 4, "ffn_dim": 768, "attention_heads": 4, "dropout": 0.0, "attention_dropout": 0.0}
VISION = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4,
          "image_size": 140, "patch_size": 14}  # fmt: skip
KEPT = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "preprocessor_config.json")  # fmt: skip
HELD_OUT_SEED = 1000  # the evaluation's scenes: a seed no stage trains on
HELD_OUT_SCENES = 500


@dataclass(frozen=True)
class Stage:
    """One ``train`` run of the curriculum: its scenes (count, seed, at most this many shapes each) and run."""

    name: str
    scenes: int
    seed: int
    max_shapes: int
    steps: int
    lr: float
    warmup: int = 100
    batch_size: int = 16


STAGES = (
    Stage("lone", scenes=3000, seed=11, max_shapes=1, steps=1500, lr=1e-3),
    Stage("scenes", scenes=12000, seed=12, max_shapes=4, steps=7500, lr=5e-4, warmup=50),
)


def corpus() -> str:
    """The tokenizer's text: the tiny checkpoint's corpus and every word the shapes' texts use."""
    lines = [f"An image of a {c} {k}, a {c} {k} and two {c} {k}s." for c in COLOURS for k in KINDS]
    lines += [f"the {k} left of the {c} {j} right of above below" for c in COLOURS for k in KINDS for j in KINDS]
    lines += [f"It is a {c} {k}. Question: What colour is the {k}? Answer: {c}." for c in COLOURS for k in KINDS]
    return CORPUS + "\n".join(lines)


def config() -> Kosmos2Config:
    """The architecture (the vocabulary is the tokenizer's)."""
    return tiny_config(build_tokenizer(corpus=corpus()).get_vocab_size(), text=TEXT, vision=VISION)


def write_start(folder: Path, seed: int = 0) -> Path:
    """The untrained checkpoint the first stage starts from."""
    return write_tiny_checkpoint(folder, config=config(), corpus=corpus(), weights=initial_state_dict(config(), seed))


def _kosmos2(*args: str) -> list[str]:
    return [sys.executable, "-m", "kosmos2", *args]


def _run(command: Sequence[str]) -> None:
    print("$ " + " ".join(command[2:] if command[:2] == [sys.executable, "-m"] else command), flush=True)
    subprocess.run(command, check=True)


def _timed(marker: Path, command: Sequence[str]) -> None:
    """Run ``command`` and record its seconds in ``marker`` (a rerun that finds the marker skips it)."""
    start = time.perf_counter()
    _run(command)
    marker.write_text(f"{time.perf_counter() - start:.1f}\n")


def build(out: Path, work: Path, stages: Sequence[Stage] = STAGES, held_out: int = HELD_OUT_SCENES) -> dict[str, Any]:
    """Train kosmos2-shapes into ``out`` (``work`` keeps the data sets and the stages' runs), score it on
    ``held_out`` new scenes (0: not) and write its model card; returns what the card says (the scores, each
    stage's losses, the seconds spent)."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / "start"
    if not (source / "model.safetensors").is_file():
        write_start(source)
    for stage in stages:
        data = work / f"data-{stage.name}"
        if not (work / f"data-{stage.name}.seconds").is_file():
            shutil.rmtree(data, ignore_errors=True)
            _timed(work / f"data-{stage.name}.seconds", _kosmos2(
                "shapes", str(data), "--count", str(stage.scenes), "--seed", str(stage.seed),
                "--max-shapes", str(stage.max_shapes)))  # fmt: skip
        run = work / f"stage-{stage.name}"
        _run(_kosmos2("train", "--data", str(data / "grounded.jsonl"), "--checkpoint", str(source), "--out", str(run),
                      "--loss-on", "answer", "--batch-size", str(stage.batch_size), "--lr", str(stage.lr),
                      "--warmup", str(stage.warmup), "--steps", str(stage.steps), "--save-every", "500"))  # fmt: skip
        source = run
    out.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        shutil.copyfile(source / name, out / name)
    runs = {s.name: json.loads((work / f"stage-{s.name}" / "train.json").read_text()) for s in stages}
    report: dict[str, Any] = {
        "stages": [
            {
                **asdict(s),
                "train_seconds": runs[s.name]["seconds"],
                "data_seconds": float((work / f"data-{s.name}.seconds").read_text()),
                "losses": runs[s.name]["losses"],
            }
            for s in stages
        ],  # fmt: skip
    }
    if held_out:
        test = work / "held-out"
        if not (test / "grounded.jsonl").is_file():
            shutil.rmtree(test, ignore_errors=True)
            _run(_kosmos2("shapes", str(test), "--count", str(held_out), "--seed", str(HELD_OUT_SEED)))
        scores = work / "eval.json"
        files = [a for f in ("refexp.jsonl", "labels.jsonl", "coco.json") for a in ("--data", str(test / f))]
        _run(
            _kosmos2(
                "eval", "--checkpoint", str(out), "--modes", "float32,bfloat16,int8", "--json", str(scores), *files
            )
        )
        report["eval"] = json.loads(scores.read_text())["modes"]
        report["held_out"] = held_out
    (out / "README.md").write_text(model_card(report), encoding="utf-8")
    return report


def _curve(losses: Sequence[Sequence[float]], points: int = 6) -> str:
    """A few (step, loss) points of a run, each the mean of the 50 steps up to it."""
    marks = [round(len(losses) * k / points) for k in range(1, points + 1)]
    out = []
    for m in marks:
        window = [loss for _, loss in losses[max(0, m - 50) : m]]
        out.append(f"{m}: {sum(window) / len(window):.3f}")
    return ", ".join(out)


def model_card(report: dict[str, Any]) -> str:
    """The model card (``README.md`` beside the weights) from :func:`build`'s report."""
    stages = report["stages"]
    minutes = sum(s["train_seconds"] + s["data_seconds"] for s in stages) / 60
    lines = [
        "# kosmos2-shapes",
        "",
        "KOSMOS-2's architecture scaled down (text decoder 192 wide, 4 layers; vision tower 128 wide, 3 layers, "
        "140 px images in 14 px patches; 64 image tokens; its own 1235-token vocabulary with the tags and the 1024 "
        "patch-index tokens), trained here from scratch on synthetic scenes of coloured circles, squares and "
        "triangles. `kosmos2`'s classes and transformers' `Kosmos2ForConditionalGeneration` load it unchanged. It "
        "is meant as the app's offline model and the accuracy tests' oracle; it knows nothing but these shapes.",
        "",
        "## How it was made",
        "",
        "```bash",
        "python -m kosmos2.training.shapes_model assets/kosmos2-shapes --work shapes-work",
        "```",
        "",
        f"{minutes:.1f} minutes on a 2-core CPU (data and training; the evaluation after it not counted). The "
        "start weights are `kosmos2.training.start.initial_state_dict`'s: places are known to both sides from the "
        "start (see its docstring). The curriculum, each stage one `kosmos2 train --loss-on answer` run:",
        "",
        "| stage | scenes (seed) | shapes per scene | steps x batch | peak lr | minutes | loss (step: mean of 50) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        lines.append(
            f"| {s['name']} | {s['scenes']} ({s['seed']}) | 1-{s['max_shapes']} | {s['steps']} x {s['batch_size']} "
            f"| {s['lr']:g} | {(s['train_seconds'] + s['data_seconds']) / 60:.1f} | {_curve(s['losses'])} |"
        )
    lines += ["", "Every text of each scene is trained on: the brief grounded caption, phrase grounding (alone and "
              "after the caption's words), referring expressions with relations, region descriptions and colour "
              "questions (`kosmos2 shapes` writes them)."]  # fmt: skip
    if "eval" in report:
        lines += ["", "## Accuracy", "", f"`kosmos2 eval` on {report['held_out']} held-out scenes (seed "
                  f"{HELD_OUT_SEED}), in each mode:", ""]  # fmt: skip
        modes = list(report["eval"])
        lines += ["| file, protocol, metric | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
        for k, first in enumerate(report["eval"][modes[0]]):
            name = f"{Path(first['data']).name}, {first['protocol']} ({first['count']})"
            for metric in [m for m in first if m not in ("data", "protocol", "count", "ms_per_item")]:
                row = [f"{report['eval'][m][k][metric]:.3f}" for m in modes]
                lines.append(f"| {name}, {metric} | " + " | ".join(row) + " |")
            lines.append(f"| {name}, ms per item | " + " | ".join(f"{report['eval'][m][k]['ms_per_item']:.0f}"
                                                               for m in modes) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kosmos2.training.shapes_model OUT [--work DIR]``."""
    p = argparse.ArgumentParser(prog="python -m kosmos2.training.shapes_model", description=__doc__)
    p.add_argument("out", type=Path, help="the model's folder (assets/kosmos2-shapes in the repository)")
    p.add_argument("--work", type=Path, default=Path("shapes-work"), help="data sets and runs (default shapes-work)")
    p.add_argument("--held-out", type=int, default=HELD_OUT_SCENES, help="new scenes to score it on (0: none)")
    args = p.parse_args(argv)
    report = build(args.out, args.work, held_out=args.held_out)
    minutes = sum(s["train_seconds"] + s["data_seconds"] for s in report["stages"]) / 60
    print(f"built in {minutes:.1f} min (data and training); wrote {args.out} and its model card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
