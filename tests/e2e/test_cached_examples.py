"""Cached examples (on Spaces, or ``--cache-examples``): an example's result is computed on its first
click and then shown again without the model, in a real browser (Debian chromium)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kosmos2.demo.loading import ModelHolder
from kosmos2.serving import Batcher
from launch import import_app

CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not IN_CI,
                                reason="Debian chromium (/usr/bin/chromium) is not installed")


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Gradio writes the cache under ./.gradio
    calls = []
    submit = Batcher.submit_batch
    monkeypatch.setattr(Batcher, "submit_batch", lambda self, **kw: calls.append(1) or submit(self, **kw))
    demo = import_app().build_demo(ModelHolder(force_tiny=True), cache_examples=True)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield url, calls, tmp_path
    finally:
        demo.close()


def _example_result(page, url: str) -> str:
    page.goto(url)
    page.get_by_role("tab", name="Caption", exact=True).click()
    panel = page.locator("[role=tabpanel]:visible")
    panel.locator("table tbody tr").first.click()  # the cat example
    caption = page.locator("#caption-result .k2-caption")
    caption.wait_for(timeout=TIMEOUT_MS)
    return caption.inner_text()


def test_an_example_runs_once_then_comes_from_the_cache(served):
    if not CHROMIUM.exists():
        pytest.fail(f"CI: {CHROMIUM} is missing (.ci/run installs Debian's chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    url, calls, folder = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            first = _example_result(browser.new_page(), url)
            assert first.startswith("An image of") and len(calls) == 1
            again = _example_result(browser.new_page(), url)  # a new visitor
        finally:
            browser.close()
    assert again == first and len(calls) == 1  # shown from the cache: no second model call
    assert list((folder / ".gradio" / "cached_examples").rglob("*.csv"))
