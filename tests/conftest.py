"""Shared fixtures (tiny random checkpoints in the hub layout, built once per test session), the test
support modules on the import path (``tests/support``: the fake hub, launch, the reference, the stand-ins),
and the ``e2e`` marker on every test under ``tests/e2e`` (``python -m pytest -m "not e2e"``: the fast part;
the few slow whole-program runs elsewhere carry the marker themselves)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kosmos2.tiny import write_tiny_checkpoint

sys.path.insert(0, str(Path(__file__).parent / "support"))

from launch import serve  # noqa: E402  (tests/support is importable from the line above on)

E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_checkpoint(name, **kwargs)`` writes (once per name) a tiny checkpoint with
    ``write_tiny_checkpoint(**kwargs)`` and returns its folder."""
    made: dict[str, Path] = {}

    def make(name: str, **kwargs: object) -> Path:
        if name not in made:
            made[name] = write_tiny_checkpoint(tmp_path_factory.mktemp(name), **kwargs)
        return made[name]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(make_checkpoint: Callable[..., Path]) -> Path:
    """The default built-in tiny checkpoint (tags in the tokenizer, tied matrix as embed_tokens)."""
    return make_checkpoint("tiny")


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    """The URL of the app served in this process on the built-in tiny checkpoint (one per test module)."""
    with serve() as url:
        yield url
