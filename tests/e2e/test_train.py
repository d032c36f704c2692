"""``kosmos2 train`` as a user runs it: label -> train -> the model answers, a bad command writes nothing,
SIGTERM and SIGKILL then a rerun end where an uninterrupted run does, and torchrun with two processes
follows one process's loss curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kosmos2.tiny import tiny_config
from launch import ROOT
from scenes import SCENES, write_scenes



def kosmos2(*args: object, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kosmos2", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder)
    return folder


@pytest.fixture(scope="module")
def still(make_checkpoint) -> Path:
    """A tiny checkpoint without dropout (so that processes with their own random streams agree)."""
    return make_checkpoint("no-dropout", config=tiny_config(0, text={"dropout": 0.0, "attention_dropout": 0.0}))


def _train(data: Path, checkpoint: Path, out: Path, *flags: object) -> subprocess.CompletedProcess:
    return kosmos2("train", "--data", data, "--checkpoint", checkpoint, "--out", out, *flags)


def test_label_then_train_then_the_trained_model_answers(tiny_checkpoint, scenes, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for colour, _ in SCENES[:2]:
        (images / f"{colour}.png").write_bytes((scenes / f"{colour}.png").read_bytes())
    coco = tmp_path / "labels.json"
    detect = ["--task", "detect", "--phrase", "a thing", "--threshold", 0, "--max-instances", 3]  # random weights
    done = kosmos2("label", images, "--tiny", *detect, "--format", "coco", "--out", coco)
    assert done.returncode == 0, done.stderr
    journal = tmp_path / "labels.jsonl"
    for data, flags in ((journal, ["--lora", 4]), (coco, [])):
        out = tmp_path / f"out-{data.suffix[1:]}"
        run = _train(data, tiny_checkpoint, out, "--images", images, "--steps", 3, "--batch-size", 2, *flags)
        assert run.returncode == 0, run.stderr
        assert "trained 3 steps" in run.stderr and f"--checkpoint {out}" in run.stderr
        assert json.loads((out / "train.json").read_text())["steps"] == 3
        answer = kosmos2("--checkpoint", out, "--task", "ground", "--phrase", "a thing", "--json", images / "red.png")
        assert answer.returncode == 0, answer.stderr
        assert f"Loading KOSMOS-2 from {out}" in answer.stderr and "tiny" not in answer.stderr
        assert json.loads(answer.stdout)["caption"] == "a thing"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "steps must be at least 1"),
        (["--lora", "0"], "rank must be at least 1"),
        (["--merge"], "--merge applies to --lora"),
        (["--format", "yaml"], "invalid choice"),
        (["--lora", "4", "--lora-target", "nothing"], "no linear layer"),
        (["--lora", "4", "--lora-alpha", "0"], "alpha must be positive"),
        (["--max-grad-norm", "-1"], "max_grad_norm must be 0 or more"),
    ],
)
def test_a_bad_command_says_one_line_exits_2_and_writes_nothing(tiny_checkpoint, scenes, tmp_path, flags, message):
    out = tmp_path / "out"
    run = _train(scenes / "refexp.jsonl", tiny_checkpoint, out, *flags)
    assert run.returncode == 2, run.stderr
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and (message is None or message in error[0])
    assert not out.exists()


def test_strict_refuses_a_file_with_a_bad_record_and_the_default_leaves_it_out(tiny_checkpoint, scenes, tmp_path):
    data = tmp_path / "data.jsonl"
    good = (scenes / "refexp.jsonl").read_text()
    data.write_text(good + json.dumps({"image": "gone.png", "expression": "x", "box": [0, 0, 5, 5]}) + "\n")
    strict = _train(data, tiny_checkpoint, tmp_path / "a", "--images", scenes, "--strict", "--steps", 1)
    assert strict.returncode == 2 and f"{data}:5: no such image" in strict.stderr
    assert len(strict.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
    lenient = _train(data, tiny_checkpoint, tmp_path / "b", "--images", scenes, "--steps", 1)
    assert lenient.returncode == 0, lenient.stderr
    assert f"leaving out 1 record(s) of {data}" in lenient.stderr and f"{data}:5: no such image" in lenient.stderr


def _wait_for(path_glob: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(path_glob.parent.glob(path_glob.name)):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_resumes_and_ends_with_the_uninterrupted_weights(tiny_checkpoint, scenes, tmp_path, how):
    flags = ["--lora", 4, "--steps", 300, "--save-every", 20, "--batch-size", 4, "--lr", "1e-3"]
    whole = _train(scenes / "refexp.jsonl", tiny_checkpoint, tmp_path / "whole", *flags)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    command = ["train", "--data", scenes / "refexp.jsonl", "--checkpoint", tiny_checkpoint, "--out", out, *flags]
    proc = subprocess.Popen([sys.executable, "-m", "kosmos2", *map(str, command)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint-*", proc)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=60)
    if how == signal.SIGTERM:
        assert proc.returncode == 143 and "rerun the same command to resume" in stderr
    else:
        assert proc.returncode == -9
    assert not (out / "train.json").exists()
    again = _train(scenes / "refexp.jsonl", tiny_checkpoint, out, *flags)
    assert again.returncode == 0, again.stderr
    assert "resumed at step" in again.stderr
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (tmp_path / "whole", out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [json.loads((p / "train.json").read_text())["losses"] for p in (tmp_path / "whole", out)]
    assert losses[0] == losses[1]


def test_torchrun_with_two_processes_follows_one_process(still, scenes, tmp_path):
    common = ["--data", scenes / "refexp.jsonl", "--checkpoint", still, "--steps", 6, "--lr", "1e-3", "--save-every", 0]
    one = kosmos2("train", *common, "--out", tmp_path / "one", "--batch-size", 4)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run(
        [*torchrun, "-m", "kosmos2", "train", *map(str, common), "--out", str(tmp_path / "two"), "--batch-size", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    curves = [[loss for _, loss in json.loads((tmp_path / n / "train.json").read_text())["losses"]] for n in ("one", "two")]
    assert len(curves[0]) == len(curves[1]) == 6
    assert curves[0][-1] < curves[0][0]
    assert curves[1] == pytest.approx(curves[0], rel=1e-5)
