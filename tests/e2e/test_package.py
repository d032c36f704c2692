"""The package as a user installs it: a wheel built from the sources by pip, installed into a fresh virtual
environment outside the repository, then imported and run as the ``kosmos2`` command from a folder that
is not the repository. Also: ``help(kosmos2)``'s usage example runs as shown."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from PIL import Image

import kosmos2
from launch import ROOT

TIMEOUT_S = 300  # a hang, not the expected time (the module takes ~30 s)


def run(args: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess:
    """Run ``args`` with the environment's variables minus ``PYTHONPATH`` (so nothing reaches the repository)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)


def checked(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = run(args, cwd)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment in a temporary folder holding the wheel built from this checkout.

    It sees this environment's packages (torch, pillow, ...) and installs the wheel with ``--no-index``:
    the install fails unless the wheel's dependency ranges are met by what is installed, and it cannot
    download anything."""
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "source"  # a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "kosmos2", source / "kosmos2", ignore=shutil.ignore_patterns("__pycache__"))
    checked([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
             "-w", str(tmp / "dist")], tmp)
    (wheel,) = (tmp / "dist").glob("*.whl")

    env = tmp / "venv"
    checked([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env)], tmp)
    python = env / "bin" / "python"
    # --system-site-packages gives the base interpreter's packages; when this runs inside a virtual
    # environment, its own packages are another folder: a .pth line adds them.
    purelib = checked([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp)
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib.stdout.strip(), "outer-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    checked([str(python), "-m", "pip", "install", "--no-index", str(wheel)], tmp)
    return env


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder outside the repository, with an image in it."""
    folder = tmp_path_factory.mktemp("elsewhere")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "red.png")
    return folder


def test_import_kosmos2_gets_the_installed_package_not_the_repository(venv, elsewhere):
    proc = checked([str(venv / "bin" / "python"), "-c", "import kosmos2; print(kosmos2.__file__)"], elsewhere)
    location = Path(proc.stdout.strip()).resolve()
    assert location.is_relative_to(venv.resolve()) and not location.is_relative_to(ROOT)
    assert location.name == "__init__.py" and location.parent.name == "kosmos2"


def test_the_wheel_holds_every_file_of_the_kosmos2_package_and_nothing_else(venv):
    script = ("import importlib.metadata as m; d = m.distribution('kosmos2-demo'); "
              "print('\\n'.join(f.as_posix() for f in d.files))")
    files = checked([str(venv / "bin" / "python"), "-c", script], venv).stdout.split()
    # beside the package: its .dist-info, and the console script in ../../bin, outside site-packages
    others = {f.split("/")[0] for f in files if not f.startswith("kosmos2/")}
    assert {t for t in others if not t.endswith(".dist-info")} == {".."}
    ours = {p.relative_to(ROOT).as_posix() for p in (ROOT / "kosmos2").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    installed = {f for f in files if f.startswith("kosmos2/") and "__pycache__" not in f}
    assert installed == ours  # data files (kosmos2/expectations/) included
    assert any(not f.endswith(".py") for f in ours)


def test_the_wheel_depends_on_the_library_s_imports_and_the_ui_is_an_extra(venv):
    script = "import importlib.metadata as m; print('\\n'.join(m.distribution('kosmos2-demo').requires))"
    requires = checked([str(venv / "bin" / "python"), "-c", script], venv).stdout.splitlines()
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower()): r for r in requires}
    assert {n for n, r in names.items() if "extra ==" not in r} == {
        "torch", "pillow", "tokenizers", "safetensors", "huggingface-hub", "numpy", "tqdm"}
    assert 'extra == "app"' in names["gradio"] and 'extra == "app"' in names["gradio-image-annotation"]


def test_the_kosmos2_command_shows_its_help(venv, elsewhere):
    proc = checked([str(venv / "bin" / "kosmos2"), "--help"], elsewhere)
    assert proc.stdout.startswith("usage: kosmos2 ") and "--task" in proc.stdout
    for sub in ("label", "selfcheck"):  # the subcommands name the command as it was run too
        usage = checked([str(venv / "bin" / "kosmos2"), sub, "--help"], elsewhere).stdout
        assert usage.startswith(f"usage: kosmos2 {sub} ")


def test_the_kosmos2_command_runs_a_caption_on_the_tiny_checkpoint(venv, elsewhere):
    proc = checked([str(venv / "bin" / "kosmos2"), "red.png", "--tiny", "--max-new-tokens", "3", "--json"], elsewhere)
    result = json.loads(proc.stdout)
    assert set(result) == {"caption", "entities", "raw", "seconds", "new_tokens"}
    assert result["raw"].startswith("<grounding> An image of")  # the caption task's prompt, then the model's text
    assert result["caption"].startswith("An image of") and 1 <= result["new_tokens"] <= 3
    assert "random" in proc.stderr and list(elsewhere.iterdir()) == [elsewhere / "red.png"]


def test_the_kosmos2_command_exits_with_the_status_of_main(venv, elsewhere):
    proc = run([str(venv / "bin" / "kosmos2"), "no-such-image.png", "--tiny"], elsewhere)
    assert (proc.returncode, proc.stderr) == (2, "error: Could not read the image: no such file.\n")


def test_help_kosmos2_shows_a_usage_example_that_runs_as_shown(tiny_checkpoint):
    doc = kosmos2.__doc__
    (example,) = re.findall(r"::\n\n((?:    .*\n|\n)+)", doc)
    code = "\n".join(line[4:] for line in example.splitlines())
    assert "from kosmos2 import AutoProcessor, Kosmos2ForConditionalGeneration" in code
    code = code.replace('"microsoft/kosmos-2-patch14-224"', repr(str(tiny_checkpoint)))
    code = code.replace('"cat.jpg"', repr(str(ROOT / "assets" / "cat.jpg"))).replace("max_new_tokens=64", "max_new_tokens=4")
    namespace: dict = {}
    exec(compile(code, "kosmos2.__doc__", "exec"), namespace)
    assert namespace["caption"].startswith("An image of") and isinstance(namespace["entities"], list)
    assert "kosmos2 cat.jpg" in doc  # and the command line
