"""Shared fixtures: tiny random checkpoints in the hub layout, built once per test session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kosmos2.tiny import write_tiny_checkpoint
from launch import serve


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
