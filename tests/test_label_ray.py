"""``python -m kosmos2 label --engine ray``: on a local Ray instance with two actors (each with its own
tiny model), the same journal records and byte-identical COCO and YOLO files as the one-process run.

Ray is optional (``requirements-ray.txt``); CI installs it, and there a missing Ray fails this test
instead of skipping it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launch import ROOT
from test_label import DETECT, journal_lines, make_folder, without_timing

if not os.environ.get("CI"):
    pytest.importorskip("ray.data", reason="Ray is optional: pip install -r requirements-ray.txt")


def _label(folder, out, checkpoint, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kosmos2", "label", str(folder), *DETECT, "--recursive", "--format", "coco",
           "--out", str(out), "--checkpoint", str(checkpoint), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ray_with_two_workers_gives_the_one_process_labels(tmp_path, tiny_checkpoint):
    folder = make_folder(tmp_path / "images")
    local, ray = tmp_path / "local" / "labels.json", tmp_path / "ray" / "labels.json"
    local.parent.mkdir(), ray.parent.mkdir()
    done = _label(folder, local, tiny_checkpoint)
    assert done.returncode == 0, done.stderr
    done = _label(folder, ray, tiny_checkpoint, "--engine", "ray", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "done 13 images, skipped 0 (already in the journal), failed 3" in done.stderr
    assert ray.read_bytes() == local.read_bytes()
    records = journal_lines(ray.with_suffix(".jsonl"))
    assert without_timing(records) == without_timing(journal_lines(local.with_suffix(".jsonl")))
    assert len(records) == len({r["file"] for r in records}) == 16
