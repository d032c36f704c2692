"""A newcomer's first ten minutes: bad settings, a missing image, a named checkpoint that is not there, the
offline fallback, stopping the server with SIGTERM, Gradio's stray prints, and the command line's wording.

Everything a person runs is run as they would: ``python -m kosmos2 ...`` and ``python app.py ...`` in
subprocesses, offline (``HF_HUB_OFFLINE=1``, an empty hub cache) with their own temporary folder, and
the expected texts are written out in full."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from kosmos2.demo import inputs
from kosmos2.ui import patches as process
from kosmos2.demo.loading import ModelHolder, SettingError, check_environment
from kosmos2.image_processing import ImageError, open_image
from kosmos2.tiny import main as tiny_main
from launch import ROOT, free_port, import_app, serve_subprocess

CAT = ROOT / "assets" / "cat.jpg"
TIMEOUT_S = 300  # a hang, not the expected time
BAD_SETTINGS = [
    ("KOSMOS2_DTYPE", "float64", "KOSMOS2_DTYPE must be one of float32, bfloat16, float16 (or unset), got 'float64'"),
    ("KOSMOS2_QUANTIZE", "int4", "KOSMOS2_QUANTIZE must be int8 (or unset), got 'int4'"),
    ("KOSMOS2_PACK_WEIGHTS", "yes",  # a setting that no longer exists (or a typo) is not ignored without a word
     "KOSMOS2_PACK_WEIGHTS is not a setting; the settings are KOSMOS2_CHECKPOINT, KOSMOS2_DTYPE, KOSMOS2_QUANTIZE"),
]
OFFLINE_LINE = ("[kosmos2] Could not get 'microsoft/kosmos-2-patch14-224': the Hugging Face hub is unreachable "
                "(offline, or HF_HUB_OFFLINE=1) and the local cache has no complete copy: running on the built-in "
                "tiny checkpoint (random weights) instead.")


def run(args: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess:
    """``args`` from the repository root, offline, with ``TMPDIR`` under ``tmp``, no ``KOSMOS2_*`` variable
    but those of ``env``."""
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("KOSMOS2_")}
    full = {**base, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"), "TMPDIR": str(tmp / "tmp"),
            "GRADIO_ANALYTICS_ENABLED": "False", **env}
    return subprocess.run(args, cwd=ROOT, env=full, capture_output=True, text=True, timeout=TIMEOUT_S)


def cli(*args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "kosmos2", *args], tmp, **env)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("variable, value, message", BAD_SETTINGS)
def test_a_bad_setting_stops_the_cli_with_one_line_before_anything_loads(tmp_path, variable, value, message):
    proc = cli(str(CAT), tmp=tmp_path, **{variable: value})
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {message}\n")
    assert files_under(tmp_path / "tmp") == []  # the tiny checkpoint was not written


@pytest.mark.parametrize("variable, value, message", BAD_SETTINGS)
def test_a_bad_setting_stops_the_app_with_one_line_without_serving(tmp_path, variable, value, message):
    proc = run([sys.executable, "app.py"], tmp_path, **{variable: value})
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {message}\n")


@pytest.mark.parametrize("variable, value, message", BAD_SETTINGS)
def test_importing_the_app_with_a_bad_setting_raises_one_clear_error(monkeypatch, variable, value, message):
    app = import_app()
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingError) as info:
        app.build_demo()  # what the module-level `demo = build_demo()` runs when Spaces imports app.py
    assert str(info.value) == message


def test_only_kosmos2_variables_are_checked():
    check_environment({"KOSMOS2_DTYPE": "float32", "HOME": "/root", "XKOSMOS2_FOO": "1", "kosmos2_x": "1"})
    with pytest.raises(SettingError, match="^KOSMOS2_A, KOSMOS2_B are not settings; the settings are "):
        check_environment({"KOSMOS2_B": "1", "KOSMOS2_A": "1"})


def test_int8_on_a_gpu_is_a_setting_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("KOSMOS2_QUANTIZE", "int8")
    with pytest.raises(SettingError, match=r"^KOSMOS2_QUANTIZE=int8: int8 weights need the model on the CPU, not cuda$"):
        ModelHolder(force_tiny=True, device="cuda")


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("name, message", [("no-such.jpg", "Could not read the image: no such file."),
                                           ("assets", "Could not read the image: the path is a folder, not a file.")])
def test_a_missing_image_or_a_folder_is_named_as_such(tmp_path, name, message):
    proc = cli(name, "--tiny", tmp=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {message}\n")


def test_open_image_tells_a_missing_file_a_folder_and_a_fifo_apart(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path / "none.png", "missing"), (tmp_path, "folder"), (tmp_path / "fifo", "unreadable")):
        with pytest.raises(ImageError) as info:
            open_image(path)
        assert info.value.kind == kind, path
        with pytest.raises(inputs.InputError, match=re.escape(inputs._IMAGE_MESSAGES[kind])):
            inputs.load_image(str(path))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(CAT.read_bytes()[:2000])
    with pytest.raises(ImageError) as info:  # damaged data is still "damaged"
        open_image(truncated)
    assert info.value.kind == "damaged"


# ----------------------------------------------------------------------------- checkpoints


def test_a_named_checkpoint_that_cannot_be_loaded_stops_the_cli(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    by_flag = cli(str(CAT), "--checkpoint", str(empty), tmp=tmp_path)
    assert by_flag.returncode == 2 and by_flag.stdout == ""
    assert by_flag.stderr.splitlines()[-1] == f"error: The processor in '{empty}' is incomplete: missing tokenizer.json"
    by_env = cli(str(CAT), tmp=tmp_path, KOSMOS2_CHECKPOINT=str(tmp_path / "none"))
    assert by_env.returncode == 2 and by_env.stdout == ""
    assert by_env.stderr.splitlines()[-1] == f"error: Checkpoint folder not found: {tmp_path / 'none'}"
    assert "tiny" not in by_flag.stderr + by_env.stderr and files_under(tmp_path / "tmp") == []


def test_a_named_checkpoint_that_cannot_be_loaded_stops_the_app_before_serving(tmp_path):
    proc = run([sys.executable, "app.py", "--checkpoint", str(tmp_path / "none")], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == f"error: Checkpoint folder not found: {tmp_path / 'none'}"
    assert [line for line in proc.stderr.splitlines() if line.startswith("error")] == [proc.stderr.splitlines()[-1]]


def test_the_default_checkpoint_offline_falls_back_with_one_short_line(tmp_path):
    proc = cli(str(CAT), "--max-new-tokens", "2", "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert re.fullmatch(r"\[kosmos2\] Loading KOSMOS-2 from microsoft/kosmos-2-patch14-224 on \w+ \(once per "
                        r"process; this can take a while\)\.\.\.", lines[0])
    assert lines[1] == OFFLINE_LINE
    assert re.fullmatch(r"\[kosmos2\] Model ready in [\d.]+ s\.", lines[2])
    assert lines[3:] == ["warning: tiny checkpoint with random weights: outputs are random"]
    assert '"caption": "An image of' in proc.stdout


# ----------------------------------------------------------------------------- the server's process


@pytest.fixture(scope="module", params=[signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def stopped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``python app.py --tiny`` served, loaded in a page's way (its config, the box annotator's files), one
    caption made with ``gradio_client`` (whose connection stays open), then stopped with SIGTERM (``kill``)
    or SIGINT (Ctrl-C). What it left and printed."""
    tmp = tmp_path_factory.mktemp("served")
    upload = tmp / "upload-newcomer.jpg"  # a name of its own: Gradio keeps copies of the example images
    upload.write_bytes(CAT.read_bytes())
    with serve_subprocess(tmp) as (url, server):
        config = httpx.get(f"{url}config", timeout=60).json()
        (annotator,) = {c["component_class_id"] for c in config["components"] if c["type"] == "image_annotator"}
        statuses = [httpx.get(f"{url}gradio_api/custom_component/{annotator}/client/component/{name}",
                              timeout=60).status_code for name in ("index.js", "style.css")]
        caption, _, png = Client(url, verbose=False).predict(handle_file(str(upload)), max_new_tokens=2,
                                                        api_name="/caption")
        before = {"tmp": [p.name for p in (tmp / "tmp").iterdir()], "gradio": files_under(tmp / "gradio")}
        server.send_signal(request.param)
        server.wait(timeout=TIMEOUT_S)
    return {"tmp": tmp, "statuses": statuses, "caption": caption, "before": before, "status": server.returncode,
            "log": (tmp / "server.log").read_text(errors="replace")}


def test_sigterm_and_ctrl_c_stop_the_server_cleanly_and_leave_no_files(stopped):
    run_ = stopped
    assert run_["caption"].startswith("An image of")
    # while it ran: the tiny checkpoint, the app's output folder, Gradio's copies of the upload and the result
    assert {n.rsplit("-", 1)[0] for n in run_["before"]["tmp"]} >= {"kosmos2-tiny", "kosmos2-out"}, run_["before"]
    assert any(p.suffix == ".png" for p in run_["before"]["gradio"]), run_["before"]
    assert run_["status"] == 0, run_["log"][-3000:]
    assert files_under(run_["tmp"] / "tmp") == [], run_["log"][-3000:]
    examples = {p.name for p in (ROOT / "assets").iterdir()}  # Gradio keeps its copies of the example images
    assert [p for p in files_under(run_["tmp"] / "gradio") if p.name not in examples] == []
    assert "Traceback" not in run_["log"]


def test_a_page_load_prints_no_stray_gradio_lines(stopped):
    log = stopped["log"]
    assert stopped["statuses"] == [200, 200]  # the files were served (each printed a line before)
    assert "Running on local URL:" in log
    assert "environment=client" not in log and "To create a public link" not in log, log


def test_only_the_two_stray_lines_are_dropped(capsys):
    stray = ["id=a24a3f35, environment=client, type=component, file_name=style.css",
             "* To create a public link, set `share=True` in `launch()`."]
    kept = ["Keyboard interruption in main thread... closing server.", "id=1, environment=client", "ERROR: boom",
            "* Running on local URL:  http://127.0.0.1:7860"]
    assert [process.is_stray_gradio_line(t) for t in stray + kept] == [True, True, False, False, False, False]
    for text in stray + kept:
        process._print_unless_stray(text)
    process._print_unless_stray(stray[0], file=sys.stderr)  # only stdout is filtered
    out, err = capsys.readouterr()
    assert out.splitlines() == kept and err.splitlines() == [stray[0]]


# ----------------------------------------------------------------------------- wording


def test_cli_help_joins_tasks_and_texts_with_full_stops():
    from kosmos2.cli.task import parser

    text = " ".join(parser().format_help().split())
    assert ".;" not in text and ".)" not in text
    assert "caption (Grounded caption): A brief caption; each object it mentions is located. detailed (" in text


def test_tiny_help_names_its_command(capsys):
    with pytest.raises(SystemExit) as info:
        tiny_main(["--help"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m kosmos2.tiny ")


# ----------------------------------------------------------------------------- host, port, MCP URL


def test_a_taken_port_is_one_error_line_not_another_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "app.py", "--tiny", "--port", str(port)], cwd=ROOT, capture_output=True,
                              text=True, timeout=180, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} (") and proc.stderr.endswith(
        "); choose another --port or --host\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Running on" not in proc.stdout


def test_the_port_asked_for_is_the_port_served_and_mcp_prints_its_url(tmp_path):
    port = free_port()
    with serve_subprocess(tmp_path, args=("--tiny", "--port", str(port), "--host", "127.0.0.1", "--mcp")) as (url, _):
        assert url == f"http://127.0.0.1:{port}/"
        line = f"* MCP server (streamable HTTP): http://127.0.0.1:{port}/gradio_api/mcp/\n"
        deadline = time.monotonic() + 30  # printed once launch() returns, just after the URL line
        while line not in (log := (tmp_path / "server.log").read_text()):
            assert time.monotonic() < deadline, log
            time.sleep(0.1)
