"""The README and the pages under ``docs/``: the README stays short (at most 200 lines) and keeps the Spaces
front matter and the two quick-start commands; every relative link resolves; ``docs/architecture.md``
names every module of the package.

The rule for ``docs/architecture.md``: every ``kosmos2/**/*.py`` file is named there by its path from the
repository root, in backticks. A module file is named as itself (```kosmos2/serving/engine.py```); a
package's ``__init__.py`` is named by its folder with a trailing slash (```kosmos2/serving/``` for
``kosmos2/serving/__init__.py``, ```kosmos2/``` for the package itself), or by its own path. The other way
round, every path under ``kosmos2/`` named there in backticks exists: a file, or (ending in ``/``) a folder
with an ``__init__.py``. So a module added, moved or removed without its row fails here.

Links: every Markdown link or image ``[text](target)`` outside code in ``README.md`` and ``docs/*.md``
whose target has no scheme (``https:``, ``mailto:``) points to an existing file or folder, relative to the
page (``#anchor`` parts are ignored; a target that is only an anchor is not checked). Pure Python, no
server: it runs in well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from launch import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "architecture.md"
PACKAGE = ROOT / "kosmos2"
MAX_README_LINES = 200
QUICK_START = ("pip install -r requirements.txt && python app.py",
               "pip install -r requirements-dev.txt && python -m pytest")
SCREENSHOT = DOCS / "screenshot.png"
SCREENSHOT_MAX_BYTES = 300 * 1024

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
NAMED_PATH = re.compile(r"`(kosmos2/[^`\s]*)`")
NAMED_TEST = re.compile(r"`((?:tests/[\w/]*/)?test_\w+\.py)`")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """``text`` without its fenced code blocks and code spans (a link inside code is not a link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def relative_links(page: Path) -> list[str]:
    """The targets of the relative links and images of ``page``, anchors dropped."""
    targets = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if SCHEME.match(target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def front_matter() -> dict:
    text = README.read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must start with the Spaces front matter (---)"
    return yaml.safe_load(text.split("---")[1])


def test_the_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (f"README.md has {len(lines)} lines; the limit is {MAX_README_LINES}: "
                                            "move the details to a page under docs/")


def test_every_relative_link_points_to_an_existing_file():
    broken, seen = [], 0
    for page in pages():
        for target in relative_links(page):
            seen += 1
            path = (ROOT / target.lstrip("/")) if target.startswith("/") else (page.parent / target)
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert seen > 0, "no relative link found: the link pattern is broken"
    assert broken == [], "links to missing files:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page_and_shows_the_screenshot():
    linked = {(README.parent / t).resolve() for t in relative_links(README)}
    missing = [p.relative_to(ROOT).as_posix() for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert missing == [], f"README.md does not link these pages: {missing}"
    assert "](docs/screenshot.png)" in prose(README.read_text(encoding="utf-8"))


def test_the_screenshot_is_a_small_png_of_the_page():
    from PIL import Image

    with Image.open(SCREENSHOT) as shot:
        assert (shot.format, shot.size) == ("PNG", (1280, 900)), (shot.format, shot.size)
    assert SCREENSHOT.stat().st_size < SCREENSHOT_MAX_BYTES, "docs/screenshot.png is too large: rerun docs/screenshot.py"


def _module_names() -> dict[str, Path]:
    """Each module file of the package by the name docs/architecture.md must use (a package by its folder)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        names[relative[: -len("__init__.py")] if path.name == "__init__.py" else relative] = path
    return names


def test_every_module_is_named_in_the_architecture_page():
    named = set(NAMED_PATH.findall(ARCHITECTURE.read_text(encoding="utf-8")))
    missing = [name for name, path in _module_names().items()
               if name not in named and path.relative_to(ROOT).as_posix() not in named]
    assert missing == [], f"docs/architecture.md has no row for: {missing}"


def test_every_module_named_in_the_architecture_page_exists():
    named = set(NAMED_PATH.findall(ARCHITECTURE.read_text(encoding="utf-8")))
    assert named, "docs/architecture.md names no module"
    gone = sorted(name for name in named
                  if not ((ROOT / name / "__init__.py").is_file() if name.endswith("/") else (ROOT / name).is_file()))
    assert gone == [], f"docs/architecture.md names modules that do not exist: {gone}"


def test_every_test_file_the_docs_name_exists():
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    by_name = {Path(t).name for t in tests}
    named = {(page.name, name) for page in pages() for name in NAMED_TEST.findall(page.read_text(encoding="utf-8"))}
    assert named, "the docs name no test file"
    gone = sorted((page, name) for page, name in named if name not in (tests if "/" in name else by_name))
    assert gone == [], f"the docs name test files that do not exist: {gone}"


def test_the_front_matter_still_runs_app_py():
    front = front_matter()
    assert front["app_file"] == "app.py"
    assert front["sdk"] == "gradio"


def test_the_quick_start_commands_are_in_the_readme():
    text = README.read_text(encoding="utf-8")
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    for command in QUICK_START:
        assert any(f"\n{command}\n" in block for block in blocks), f"README.md lost its quick-start command {command!r}"
