"""The app in a real browser (Debian chromium through Python playwright) on the tiny checkpoint.

Screenshots go to ``test-output/`` (git-ignored). Skipped when /usr/bin/chromium is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(app_url)
            yield page
        finally:
            browser.close()


def _set_fast_settings(page) -> None:
    page.get_by_text("Generation settings").click()
    box = page.get_by_label("Max new tokens", exact=False).locator("visible=true").last
    box.fill("6")
    box.press("Enter")


def test_grounded_caption_from_an_example(page):
    page.get_by_text("tiny checkpoint with random weights").wait_for()  # the banner
    _set_fast_settings(page)
    page.get_by_role("tab", name="Caption").click()
    panel = page.locator("[role=tabpanel]:visible")
    panel.locator("table tbody tr").first.click()  # the cat example
    page.locator("#caption-image img").wait_for()
    page.locator("#caption-run").click()
    caption = page.locator("#caption-result .k2-caption")
    caption.wait_for()
    page.locator("#caption-png").get_by_text("kosmos2-").wait_for()  # the annotated PNG download
    assert caption.inner_text().startswith("An image of")
    assert page.locator("#caption-result .k2-stage img").get_attribute("src").startswith("data:image/jpeg;base64,")
    assert "new tokens" in page.locator("#caption-timing").inner_text()
    page.screenshot(path=str(SHOTS / "caption.png"), full_page=True)


def test_draw_a_box_by_mouse_and_get_a_description(page):
    page.get_by_role("tab", name="Describe a region").click()
    panel = page.locator("[role=tabpanel]:visible")
    panel.locator(".gallery button, table tbody tr, button.gallery").first.click()  # cat with one box
    canvas = page.locator("#refer-image canvas")
    canvas.wait_for()
    page.locator("#refer-image").get_by_role("button", name="Create box").click()
    area = canvas.bounding_box()
    # drag a second rectangle in the lower left of the image (the example's box is upper right)
    x0, y0 = area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.6
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 50, y0 + 30, steps=5)
    page.mouse.move(x0 + 100, y0 + 70, steps=5)
    page.mouse.up()
    page.locator("#refer-image").screenshot(path=str(SHOTS / "refer-drawn.png"))
    page.locator("#refer-run").click()
    page.wait_for_function("document.querySelectorAll('#refer-result .k2-row').length === 2")
    page.locator("#refer-png").get_by_text("kosmos2-").wait_for()  # the final result (no more re-renders)
    rows = page.locator("#refer-result .k2-row").all_inner_texts()
    assert all(r.startswith("It is") for r in rows)

    # the description is linked to its box: hovering the phrase highlights the box
    phrase = page.locator("#refer-result span.k2-ph").nth(1)
    box_of_phrase = page.locator(f'#refer-result rect.k2-box[data-e="{phrase.get_attribute("data-e")}"]')
    assert box_of_phrase.evaluate("e => getComputedStyle(e).strokeWidth") == "3px"
    phrase.hover()
    page.wait_for_timeout(300)
    assert box_of_phrase.evaluate("e => getComputedStyle(e).strokeWidth") == "6px"
    assert phrase.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    # and the other way round: hovering the other box highlights its phrase only
    other = page.locator("#refer-result span.k2-ph").nth(0)
    page.locator(f'#refer-result rect.k2-box[data-e="{other.get_attribute("data-e")}"]').hover()
    page.wait_for_timeout(300)
    assert other.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    assert phrase.evaluate("e => getComputedStyle(e).backgroundColor") == "rgba(0, 0, 0, 0)"
    page.screenshot(path=str(SHOTS / "refer-result.png"), full_page=True)
