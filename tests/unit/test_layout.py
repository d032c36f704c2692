"""The package's shape: the import graph of ``kosmos2`` has no circles, no module imports from a layer
above its own, and the demo layer imports without Gradio."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from launch import ROOT

PACKAGE = ROOT / "kosmos2"

# Written by hand from the layout: the model library, then generation, the two model classes, serving, the
# demo's tools, and on top the UI and the command line (siblings: neither imports the other).
LAYERS = {"generation": 1, "model": 2, "serving": 3, "training": 3, "demo": 4, "evaluation": 4, "ui": 5, "cli": 5}


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its text (at the top, inside functions,
    or for type checking only); ``from . import x`` counts as module ``x`` where there is one."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                elif target in known:
                    found.add(target)
    return found - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def group(name: str) -> str:
    """A module's part of the layout: its sub-package (``python -m kosmos2`` belongs to the command line),
    ``model`` for the package itself (the public names of the model classes), "" for the library's plain
    modules."""
    parts = name.split(".")
    if len(parts) == 1:
        return "model"
    return {"__main__": "cli"}.get(parts[1], parts[1] if parts[1] in LAYERS else "")


def layer(name: str) -> int:
    return LAYERS.get(group(name), 0)


def test_the_import_graph_has_no_circles():
    edges = graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        for target in sorted(edges[node]):
            visit(target, path + [node])
        done.add(node)

    for name in sorted(edges):
        visit(name, [])


def test_no_module_imports_from_a_layer_above_its_own():
    wrong = [(name, target) for name, targets in graph().items() for target in targets
             if layer(target) > layer(name) or (layer(target) == layer(name) == LAYERS["ui"] and group(target) != group(name))]
    assert wrong == [], wrong


def test_the_demo_layer_imports_without_gradio():
    """Everything below the UI works in a process where Gradio cannot be imported."""
    names = sorted(n for n in modules() if layer(n) < LAYERS["ui"])
    code = ("import sys, importlib\n"
            "for blocked in ('gradio', 'gradio_client', 'gradio_image_annotation'): sys.modules[blocked] = None\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print('ok', len(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


def test_every_error_the_package_defines_is_a_user_error_and_the_entry_points_catch_that_one_type():
    import importlib
    import inspect

    from kosmos2.errors import UserError

    defined = {}
    for name in modules():
        if name.endswith(("ray_engine", "__main__")) or name.startswith("kosmos2.ui"):
            continue  # (need Ray / Gradio at import: checked by their own tests)
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == name:
                defined[f"{name}.{attr}"] = value
    assert "kosmos2.demo.inputs.InputError" in defined and "kosmos2.hub.CheckpointError" in defined
    assert [n for n, cls in defined.items() if not issubclass(cls, UserError) and n != "kosmos2.errors.UserError"] == []
    for entry in ("kosmos2/cli/task.py", "kosmos2/cli/label/cli.py", "kosmos2/cli/selfcheck/command.py",
                  "kosmos2/ui/server.py", "kosmos2/ui/runner.py"):
        caught = [node.type for node in ast.walk(ast.parse((ROOT / entry).read_text()))
                  if isinstance(node, ast.ExceptHandler) and node.type is not None]
        names = {ast.unparse(t) for t in caught}
        assert "UserError" in names, entry
        assert not names & {"InputError", "SettingError", "UsageError", "JournalError", "OutputError"}, entry


def test_the_unit_tests_mirror_the_package_and_the_e2e_tests_are_marked():
    unit = ROOT / "tests" / "unit"
    folders = {p.relative_to(unit).as_posix() for p in unit.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    packages = {p.parent.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("__init__.py")}
    assert folders and folders <= packages, f"tests/unit folders that are no package of kosmos2: {folders - packages}"
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not e2e", "tests/e2e"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "no tests collected" in listed.stdout and "deselected" in listed.stdout, listed.stdout[-2000:]
