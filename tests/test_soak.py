"""Soak: ``python app.py --tiny`` serves 200 requests in a row without growing (caches are bounded)
and, once stopped, leaves no temporary file behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

from launch import import_app, serve_subprocess

WARM_UP, TOTAL = 20, 200
TASKS = [("caption", "", []), ("ground", "a thing\nthe sky", []), ("refer", "", [[2, 2, 30, 20]]),
         ("ask", "What is [this]?", [[5, 5, 40, 30]]), ("plain", "", []), ("prompt", "A photo of", [])]


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_two_hundred_requests_do_not_grow_memory_or_leave_temp_files(tmp_path):
    app = import_app()
    rng = np.random.default_rng(0)
    uploads = []
    for k in range(10):  # a new image every few requests, as users bring their own
        path = tmp_path / "uploads" / f"upload{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48 + k, 64 + 3 * k, 3), dtype=np.uint8)).save(path)
        uploads.append(path)

    served = tmp_path / "served"
    with serve_subprocess(served) as (url, server):
        client = Client(url, verbose=False, download_files=False)
        rss = {}
        for i in range(TOTAL):
            task, text, boxes = TASKS[i % len(TASKS)]
            caption, _, _ = client.predict(handle_file(str(uploads[i % len(uploads)])), text, boxes,
                                           max_new_tokens=3, api_name=f"/{task}")
            assert isinstance(caption, str) and caption
            if i + 1 in (WARM_UP, TOTAL):
                rss[i + 1] = rss_bytes(server.pid)
        (out_dir,) = (served / "tmp").glob("kosmos2-out-*")  # the app's own output folder, bounded
        assert 0 < len(files_under(out_dir)) <= app.OUTPUT_MAX_FILES
    assert server.returncode is not None
    assert rss[TOTAL] <= 1.10 * rss[WARM_UP], {n: f"{b / 2**20:.0f} MiB" for n, b in rss.items()}

    # stopped: the app's folders (outputs, tiny checkpoint) are gone; Gradio's cache keeps no upload
    # or result, only the copies of the example images it serves
    assert files_under(served / "tmp") == [], (served / "server.log").read_text(errors="replace")[-3000:]
    examples = {p.name for p in (Path(app.ASSETS)).iterdir()}
    left = [p for p in files_under(served / "gradio") if p.name not in examples]
    assert left == [], left
