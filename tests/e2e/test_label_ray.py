"""``python -m kosmos2 label --engine ray``: on a local Ray instance with two actors (each with its own
tiny model), the same journal records and byte-identical COCO and YOLO files as the one-process run.

Ray is optional (``requirements-ray.txt``); CI installs it, and there a missing Ray fails this test
instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from launch import ROOT
from labelling import DETECT, journal_lines, make_folder, without_timing

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


def test_a_ray_run_prints_no_error_or_warning_of_rays_and_leaves_no_temporary_folder(tmp_path):
    """One image and --workers 2: fewer batches than workers (Ray warned about its pool's minimum size), and
    the tiny checkpoint written by each actor. The run's temporary folder is its own (Ray and torch write
    their own folders there too)."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes((ROOT / "assets" / "cat.jpg").read_bytes())
    temporary = Path(tempfile.mkdtemp(prefix="k2-"))  # short: Ray's socket paths go under it
    try:
        done = subprocess.run([sys.executable, "-m", "kosmos2", "label", str(folder), *DETECT, "--format", "coco",
                               "--out", str(tmp_path / "labels.json"), "--tiny", "--engine", "ray", "--workers", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TMPDIR": str(temporary)})
        assert done.returncode == 0, done.stderr
        assert "done 1 images, skipped 0 (already in the journal), failed 0" in done.stderr
        assert "[kosmos2] warning: tiny checkpoint with random weights: the labels are random" in done.stderr
        assert f"tiny checkpoint (random weights) to {temporary}/kosmos2-tiny-" in done.stderr  # an actor's
        for line in done.stderr.splitlines():  # Ray's "E" (error) and "WARNING" log lines, Python warnings
            assert not re.search(r"\bE \d+ \d+\]|\bWARNING\b|Warning:|core_worker", line), line
        assert not list(temporary.glob("kosmos2-tiny-*"))
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
