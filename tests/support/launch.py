"""Serving the app for tests on a free local port with the tiny checkpoint: in this process, or as
``python app.py --tiny`` in a subprocess (to measure its memory and see what it leaves behind).

In both cases the server picks its port itself (Gradio binds the first free one of a range) and the
URL comes from the server, so no other process can take the port between choosing and binding it."""

from __future__ import annotations

import os
import re
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

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file is tests/support/launch.py)
STANDINS = ROOT / "tests" / "support" / "standins"  # packages put on a served app's PYTHONPATH
LOCAL_URL = re.compile(rb"Running on local URL:\s+(https?://[^\s,]+)")  # what Blocks.launch prints


def import_app() -> Any:
    """The ``app`` module (the repository root is put on ``sys.path`` first)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import app

    return app


@contextmanager
def serve(holder: Any = None) -> Iterator[str]:
    """Launch ``kosmos2.ui.server.build_demo(holder)`` (default: the tiny checkpoint) in this process; yield its URL.

    Gradio binds the first free port from 7860 up (trying the next one if a port is taken meanwhile)
    and returns the URL it bound, so there is no port to lose."""
    from kosmos2.demo import loading
    from kosmos2.ui.server import build_demo

    demo = build_demo(holder or loading.ModelHolder(force_tiny=True))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def free_port() -> int:
    """A port that was free a moment ago (another process may take it: use it only as a hint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served_url(proc: subprocess.Popen, log: Path, deadline: float) -> str:
    """The local URL the server prints once it listens (read from its log), ending in ``/``."""
    while True:
        found = LOCAL_URL.search(log.read_bytes())
        if found:
            return found.group(1).decode().rstrip("/") + "/"
        assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, f"the server printed no URL in time:\n{log.read_text(errors='replace')}"
        time.sleep(0.1)


@contextmanager
def serve_subprocess(tmp: Path, timeout_s: float = 300, env: dict[str, str] | None = None,
                     args: tuple[str, ...] = ("--tiny",)) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``python app.py --tiny`` (or ``app.py`` with ``args``) with its temporary folders (``TMPDIR``, ``GRADIO_TEMP_DIR``) under
    ``tmp``; yield (URL, process). On exit the server is stopped with Ctrl-C, as a person would.

    The server binds the first free port from a random start up (``GRADIO_SERVER_PORT`` is where
    Gradio starts looking, ``GRADIO_NUM_PORTS`` how far) and the URL is the one it prints, so a port
    taken by another process meanwhile is skipped, never lost. ``timeout_s`` bounds the start and
    the stop; only a hang reaches it. ``env``: more environment variables for the server."""
    start = free_port()
    env = {**os.environ, **(env or {}), "TMPDIR": str(tmp / "tmp"), "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "GRADIO_SERVER_PORT": str(start), "GRADIO_NUM_PORTS": str(min(100, 65536 - start)),
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}  # unbuffered: the URL line comes at once
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    log_path = tmp / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = _served_url(proc, log_path, time.monotonic() + timeout_s)
        urllib.request.urlopen(url, timeout=timeout_s).close()  # it listens already; this checks it answers
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
