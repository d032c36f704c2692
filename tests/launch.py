"""Serving the app for tests on a free local port with the tiny checkpoint: in this process, or as
``python app.py --tiny`` in a subprocess (to measure its memory and see what it leaves behind)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def import_app() -> Any:
    """The ``app`` module (the repository root is put on ``sys.path`` first)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import app

    return app


@contextmanager
def serve(holder: Any = None) -> Iterator[str]:
    """Launch ``app.build_demo(holder)`` (default: the tiny checkpoint) in this process; yield its URL."""
    app = import_app()
    from kosmos2.demo import loading

    demo = app.build_demo(holder or loading.ModelHolder(force_tiny=True))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_subprocess(tmp: Path, timeout_s: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``python app.py --tiny`` with its temporary folders (``TMPDIR``, ``GRADIO_TEMP_DIR``) under
    ``tmp``; yield (URL, process). On exit the server is stopped with Ctrl-C, as a person would."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp / "tmp"), "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "app.py", "--tiny"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text(errors="replace")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start in time"
                time.sleep(0.5)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
