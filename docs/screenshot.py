"""Make ``docs/screenshot.png``, the picture of the app in the README.

Run it from the repository root: ``python docs/screenshot.py``. It serves the app in this process on the
built-in tiny checkpoint (offline, random weights; nothing is downloaded), opens it in Debian's chromium
through Python playwright (never ``playwright install``), clicks the Phrase grounding tab's first example,
runs it, waits for the result and writes a 1280 x 900 PNG of the page
(256 colours, to stay under 300 kB). It takes about 15 s.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshot.png"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}
TAB, TAB_ID = "Phrase grounding", "ground"  # the tab, and the prefix of its elements' ids
MAX_NEW_TOKENS = 24  # enough for a row of text per phrase; the tiny model answers in well under a second
TIMEOUT_MS = 60_000


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kosmos2-screenshot-") as tmp:
        os.environ["GRADIO_TEMP_DIR"] = tmp  # Gradio's copies of the example image and the result go here
        return _shoot()


def _shoot() -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny checkpoint is built here: no hub needed
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from playwright.sync_api import expect, sync_playwright

    from kosmos2.demo import loading
    from kosmos2.ui.patches import drop_stray_gradio_prints
    from kosmos2.ui.server import build_demo

    drop_stray_gradio_prints()  # as python app.py does
    holder = loading.ModelHolder(force_tiny=True)
    demo = build_demo(holder)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)  # the first free port from 7860 up
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url)
                page.get_by_text("tiny checkpoint with random weights").wait_for()  # the banner: the model is loaded
                page.get_by_role("tab", name=TAB, exact=True).click()
                panel = page.locator("[role=tabpanel]:visible")
                panel.locator("table tbody tr").first.click()  # the first example: astronaut.jpg, two phrases
                expect(panel.get_by_label("Phrases")).to_have_value("a woman\nthe flag")
                page.locator(f"#{TAB_ID}-image img").first.wait_for()
                _fewer_tokens(panel)
                page.locator(f"#{TAB_ID}-run").click()
                # the run's last update is the annotated PNG's download
                page.locator(f"#{TAB_ID}-png a.download-link").wait_for()
                expect(page.locator(f"#{TAB_ID}-result .k2-caption")).to_be_visible()
                page.evaluate("window.scrollTo(0, 0)")
                page.mouse.move(0, 0)  # no hover highlight
                png = page.screenshot(full_page=False)
            finally:
                browser.close()
    finally:
        demo.close()
        holder.remove_tiny_files()
    _save_small(png)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1024:.0f} kB)")
    return 0


def _save_small(png: bytes) -> None:
    """Write the screenshot with 256 colours (a third of the size of the full-colour PNG: the README
    should stay light to clone and to load)."""
    import io

    from PIL import Image

    shot = Image.open(io.BytesIO(png)).convert("RGB")
    shot.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG).save(
        OUT, optimize=True)


def _fewer_tokens(panel) -> None:
    """At most ``MAX_NEW_TOKENS`` new tokens, greedy (the settings panel is closed again afterwards)."""
    from playwright.sync_api import expect

    panel.get_by_role("button", name="Generation settings").click()
    number = panel.get_by_label("number input for Max new tokens")
    expect(number).to_be_visible()
    for _attempt in range(5):  # the slider may still be mounting and take its default back: type again
        number.fill(str(MAX_NEW_TOKENS))
        number.press("Enter")
        try:
            expect(panel.get_by_label("range slider for Max new tokens")).to_have_value(str(MAX_NEW_TOKENS),
                                                                                      timeout=2_000)
            break
        except AssertionError:
            continue
    panel.get_by_role("radio", name="greedy").check()
    panel.get_by_role("button", name="Generation settings").click()


if __name__ == "__main__":
    sys.exit(main())
