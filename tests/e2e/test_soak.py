"""Soak: ``python app.py --tiny`` serves 200 requests in a row without growing (caches are bounded)
and, once stopped, leaves no temporary file behind.

Requests go through Gradio's plain HTTP API (upload, call, read the event stream) on one connection:
``gradio_client`` spends about 0.15 s of CPU per call on its side, which would dominate the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from kosmos2.demo.tasks import TASKS as TASK_TABLE
from kosmos2.ui.runner import OUTPUT_MAX_FILES
from kosmos2.ui.tabs import ASSETS
from launch import serve_subprocess

WARM_UP, TOTAL = 20, 200
TASKS = [("caption", "", []), ("ground", "a thing\nthe sky", []), ("refer", "", [[2, 2, 30, 20]]),
         ("ask", "What is [this]?", [[5, 5, 40, 30]]), ("plain", "", []), ("prompt", "A photo of", [])]


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def call(http: httpx.Client, url: str, task: str, image: Path, text: str, boxes: list, session: str) -> list:
    """Upload ``image``, run ``task`` on it with two new tokens; the outputs (caption, entities, PNG)."""
    with open(image, "rb") as f:
        (path,) = http.post(f"{url}gradio_api/upload", files={"files": (image.name, f)}).json()
    spec = TASK_TABLE[task]  # the endpoint's parameters in order: image, its text, boxes, grounding, settings
    data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, *([text] if spec.text else []),
            *([boxes] if spec.boxes != "none" else []), *([True] if spec.grounding_option else []),
            2, "greedy", 3, 0.7, 0.9, 0]
    # one session per user, as gradio_client and a page have (a session per call would measure Gradio's
    # session store, which the app bounds with SESSIONS_KEPT)
    event = http.post(f"{url}gradio_api/call/{task}", json={"data": data, "session_hash": session}).json()["event_id"]
    kind = None
    with http.stream("GET", f"{url}gradio_api/call/{task}/{event}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                assert kind == "complete", line
                return json.loads(line[len("data:"):])
    raise AssertionError(f"the event stream of {task} ended without a result")


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_two_hundred_requests_do_not_grow_memory_or_leave_temp_files(tmp_path):
    rng = np.random.default_rng(0)
    uploads = []
    for k in range(10):  # a new image every few requests, as users bring their own
        path = tmp_path / "uploads" / f"upload{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48 + k, 64 + 3 * k, 3), dtype=np.uint8)).save(path)
        uploads.append(path)

    served = tmp_path / "served"
    with serve_subprocess(served) as (url, server):
        http = httpx.Client(timeout=60)
        rss = {}
        for i in range(TOTAL):
            task, text, boxes = TASKS[i % len(TASKS)]
            caption, _, png = call(http, url, task, uploads[i % len(uploads)], text, boxes, f"user{i % 10}")
            assert isinstance(caption, str) and caption and png["orig_name"].startswith("kosmos2-")
            if i + 1 in (WARM_UP, TOTAL):
                rss[i + 1] = rss_bytes(server.pid)
        (out_dir,) = (served / "tmp").glob("kosmos2-out-*")  # the app's own output folder, bounded
        assert 0 < len(files_under(out_dir)) <= OUTPUT_MAX_FILES
    assert server.returncode is not None
    assert rss[TOTAL] <= 1.10 * rss[WARM_UP], {n: f"{b / 2**20:.0f} MiB" for n, b in rss.items()}

    # stopped: the app's folders (outputs, tiny checkpoint) are gone; Gradio's cache keeps no upload
    # or result, only the copies of the example images it serves
    assert files_under(served / "tmp") == [], (served / "server.log").read_text(errors="replace")[-3000:]
    examples = {p.name for p in ASSETS.iterdir()}
    left = [p for p in files_under(served / "gradio") if p.name not in examples]
    assert left == [], left
