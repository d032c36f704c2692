"""The app in a real browser (Debian chromium through Python playwright) on the tiny checkpoint:
every tab and mode end to end, boxes drawn with the mouse, an EXIF-rotated phone photo.

One page per module; each test sets the generation settings and the inputs it relies on itself.
Every wait has a deadline and fails with a message (no fixed sleeps). Screenshots go to
``test-output/`` (git-ignored). Without /usr/bin/chromium the tests are skipped, except in CI
(the environment variable ``CI`` set), where they fail.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from launch import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ASSETS = ROOT / "assets"
SHOTS = ROOT / "test-output"
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
MAX_NEW_TOKENS = 6
RESULT_TIMEOUT_MS = 60_000  # one run on the tiny checkpoint takes well under a second
UI_TIMEOUT_MS = 10_000  # an element appearing, a CSS transition, an upload
TRANSPARENT = "rgba(0, 0, 0, 0)"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not IN_CI,
                                reason="Debian chromium (/usr/bin/chromium) is not installed")


@pytest.fixture(scope="module")
def page(request):
    if not CHROMIUM.exists():  # only reached in CI: the browser tests must run there
        pytest.fail(f"CI: {CHROMIUM} is missing (.ci/run installs Debian's chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    app_url = request.getfixturevalue("app_url")  # the server starts only once the browser can run

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(app_url)
            page.get_by_text("tiny checkpoint with random weights").wait_for(timeout=RESULT_TIMEOUT_MS)  # the banner
            yield page
        finally:
            browser.close()


# ----------------------------------------------------------------------------- helpers


def _expect():
    from playwright.sync_api import expect

    return expect


def _open_tab(page, title: str):
    """The tab ``title``, with fast, deterministic generation settings where it has them (greedy, at most
    ``MAX_NEW_TOKENS`` tokens); returns its panel."""
    expect = _expect()
    page.get_by_role("tab", name=title, exact=True).click()
    panel = page.locator("[role=tabpanel]:visible")
    expect(panel, f"the tab {title!r} did not open").to_have_count(1, timeout=UI_TIMEOUT_MS)
    if panel.get_by_role("button", name="Generation settings").count():
        _fast_generation(panel)
    return panel


def _fast_generation(panel) -> None:
    """Greedy decoding of at most ``MAX_NEW_TOKENS`` tokens in the tab ``panel``'s generation settings."""
    expect = _expect()
    slider = panel.get_by_label("range slider for Max new tokens")
    if not slider.is_visible():
        panel.get_by_role("button", name="Generation settings").click()
    expect(slider, "the generation settings did not open").to_be_visible(timeout=UI_TIMEOUT_MS)
    number = panel.get_by_label("number input for Max new tokens")
    # the slider may still be mounting when the accordion opens and take its default back: type again
    for _attempt in range(5):
        number.fill(str(MAX_NEW_TOKENS))
        number.press("Enter")
        try:
            expect(slider).to_have_value(str(MAX_NEW_TOKENS), timeout=2_000)
            expect(number).to_have_value(str(MAX_NEW_TOKENS), timeout=2_000)
            break
        except AssertionError:
            continue
    else:
        pytest.fail(f"max new tokens stays at {slider.input_value()!r} after setting it to {MAX_NEW_TOKENS} "
                    "five times", pytrace=False)
    greedy = panel.get_by_role("radio", name="greedy")
    greedy.check()
    expect(greedy, "greedy decoding was not chosen").to_be_checked(timeout=UI_TIMEOUT_MS)


def _upload(page, tab: str, path: Path) -> None:
    """Put the image at ``path`` into ``#{tab}-image`` (removing the image and boxes already there)."""
    expect = _expect()
    block = page.locator(f"#{tab}-image")
    remove = block.get_by_role("button", name="Remove Image")
    if remove.is_visible():
        remove.click()
        expect(remove, f"the old image in #{tab}-image was not removed").to_be_hidden(timeout=UI_TIMEOUT_MS)
    block.locator("input[type=file]").set_input_files(str(path))
    expect(block.locator("canvas, img").first, f"#{tab}-image shows no image after the upload").to_be_visible(
        timeout=UI_TIMEOUT_MS)


def _wait_js(page, script: str, arg, what: str, timeout_ms: int = UI_TIMEOUT_MS):
    """``page.wait_for_function(script, arg)`` with a deadline; fails saying ``what`` did not happen."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return page.wait_for_function(script, arg=arg, timeout=timeout_ms).json_value()
    except PlaywrightTimeout:
        page.screenshot(path=str(SHOTS / "timeout.png"), full_page=True)
        pytest.fail(f"{what} within {timeout_ms / 1000:g} s (screenshot: test-output/timeout.png)", pytrace=False)


_PAINTED = """(sel) => {
  const c = document.querySelector(sel);
  if (!c || !c.width || !c.height) return false;
  const [r, g, b, a] = c.getContext('2d').getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
  return a > 0 && !(r > 250 && g > 250 && b > 250);
}"""


def _canvas(page, tab: str):
    """The box-drawing canvas of ``tab``, once the image is painted on it (its centre is not blank)."""
    _wait_js(page, _PAINTED, f"#{tab}-image canvas", f"the image was not painted in #{tab}-image")
    return page.locator(f"#{tab}-image canvas")


def _drag(page, x0: float, y0: float, x1: float, y1: float) -> None:
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()


def _draw_box(page, tab: str, image_size: tuple[int, int], box: tuple[float, float, float, float]) -> None:
    """Drag a rectangle over the pixel ``box`` of an image of ``image_size`` shown in ``#{tab}-image``
    (the annotator fits the image into its canvas, centred)."""
    canvas = _canvas(page, tab)
    page.locator(f"#{tab}-image").get_by_role("button", name="Create box").click()
    area = canvas.bounding_box()
    width, height = image_size
    scale = min(area["width"] / width, area["height"] / height)
    left = area["x"] + (area["width"] - width * scale) / 2
    top = area["y"] + (area["height"] - height * scale) / 2
    x1, y1, x2, y2 = box
    _drag(page, left + x1 * scale, top + y1 * scale, left + x2 * scale, top + y2 * scale)


_FINISHED = """([tab, before]) => {
  const errors = [...document.querySelectorAll('[data-testid=toast-body].error [data-testid=toast-text]')];
  if (errors.length) return {error: errors.map(e => e.innerText).join(' | ')};
  // an error without a message (no toast) shows as "Error" in the outputs' status trackers
  const trackers = [...document.querySelectorAll(`#${tab}-result [data-testid=status-tracker], ` +
                                                 `#${tab}-png [data-testid=status-tracker]`)];
  if (trackers.some(t => t.innerText.trim().startsWith('Error'))) return {error: 'Error (no message)'};
  const name = document.querySelector(`#${tab}-png td.filename`)?.getAttribute('aria-label') || '';
  return name.startsWith('kosmos2-') && name !== before ? {png: name} : false;
}"""


def _run(page, tab: str) -> dict:
    """Click ``#{tab}-run`` and wait for the final result: a fresh annotated PNG download (the last
    update of a run); an error toast fails the test with its message. Returns the result's parts:
    caption, rows, raw output, timing, the SVG overlay's viewBox and boxes (phrase -> pixel boxes)."""
    for close in page.locator("[data-testid=toast-close]").all():  # an earlier test's toast
        close.click()
    _expect()(page.locator("[data-testid=toast-body]"), "an old toast did not close").to_have_count(
        0, timeout=UI_TIMEOUT_MS)
    name = page.locator(f"#{tab}-png td.filename")
    before = name.get_attribute("aria-label") if name.count() else ""
    page.locator(f"#{tab}-run").click()
    done = _wait_js(page, _FINISHED, [tab, before], f"no result in #{tab}-png", RESULT_TIMEOUT_MS)
    if "error" in done:
        page.screenshot(path=str(SHOTS / f"{tab}-error.png"), full_page=True)
        pytest.fail(f"the {tab} run failed: {done['error']} (screenshot: test-output/{tab}-error.png)",
                    pytrace=False)
    result = page.locator(f"#{tab}-result")
    assert result.locator(".k2-status").count() == 0, "the final result still says 'generating'"
    timing = page.locator(f"#{tab}-timing").inner_text()
    tokens = re.search(r"(\d+) new tokens in", timing)
    assert tokens and 0 < int(tokens[1]) <= MAX_NEW_TOKENS, f"max new tokens was not applied: {timing!r}"
    boxes: dict[str, list[tuple[float, ...]]] = {}
    for rect in result.locator("rect.k2-box").all():
        xywh = [float(rect.get_attribute(k)) for k in ("x", "y", "width", "height")]
        x, y, w, h = xywh
        boxes.setdefault(rect.locator("title").text_content(), []).append((x, y, x + w, y + h))
    return {"caption": result.locator(".k2-caption").inner_text(),
            "rows": result.locator(".k2-row").all_inner_texts(),
            "raw": _raw_output(page), "timing": timing, "png": page.locator(f"#{tab}-png a.download-link"),
            "view_box": result.locator("svg").get_attribute("viewBox"), "boxes": boxes}


def _raw_output(page) -> str:
    """The text in the visible tab's "Raw model output" accordion (opened if closed)."""
    panel = page.locator("[role=tabpanel]:visible")
    toggle = panel.get_by_role("button", name="Raw model output")
    accordion = panel.locator(".gr-accordion", has=page.get_by_role("button", name="Raw model output"))
    text = accordion.locator("textarea")
    if not text.is_visible():
        toggle.click()
    _expect()(text, "the raw model output did not show").to_be_visible(timeout=UI_TIMEOUT_MS)
    return text.input_value()


def _png(page, link) -> Image.Image:
    """The annotated PNG behind a download link."""
    response = page.request.get(link.get_attribute("href"))
    assert response.ok, response.status
    return Image.open(io.BytesIO(response.body()))


def _near(box, expected, tolerance: tuple[float, float]) -> bool:
    tx, ty = tolerance
    return all(abs(a - b) <= (tx if k % 2 == 0 else ty) for k, (a, b) in enumerate(zip(box, expected)))


def _css_rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


# ----------------------------------------------------------------------------- caption


def test_grounded_caption_from_an_example(page):
    panel = _open_tab(page, "Caption")
    panel.get_by_role("radio", name="Detailed (grounded)").check()  # the example must set it back
    panel.locator("table tbody tr").first.click()  # the cat example
    _expect()(panel.get_by_role("radio", name="Brief (grounded)"), "the example did not set its choice").to_be_checked(
        timeout=UI_TIMEOUT_MS)
    page.locator("#caption-image img").wait_for(timeout=UI_TIMEOUT_MS)
    result = _run(page, "caption")
    assert result["caption"].startswith("An image of")
    assert page.locator("#caption-result .k2-stage img").get_attribute("src").startswith("data:image/jpeg;base64,")
    assert "new tokens" in result["timing"]
    page.screenshot(path=str(SHOTS / "caption.png"), full_page=True)


@pytest.mark.parametrize("choice, start, grounded", [
    ("Brief (grounded)", "An image of", True),
    ("Detailed (grounded)", "Describe this image in detail:", True),
    ("Brief, no grounding", "An image of", False),
], ids=["brief", "detailed", "no-grounding"])
def test_each_caption_mode(page, choice, start, grounded):
    panel = _open_tab(page, "Caption")
    _upload(page, "caption", ASSETS / "coffee.jpg")
    radio = panel.get_by_role("radio", name=choice)
    radio.check()
    _expect()(radio).to_be_checked(timeout=UI_TIMEOUT_MS)
    result = _run(page, "caption")
    assert result["caption"].startswith(start), result["caption"]
    if grounded:
        assert result["raw"].startswith(f"<grounding> {start}"), result["raw"]
    else:
        assert result["raw"].startswith(start) and "<grounding>" not in result["raw"], result["raw"]
    assert result["view_box"] == "0 0 600 400"


# ----------------------------------------------------------------------------- phrase grounding


def test_phrase_grounding_locates_each_line(page):
    panel = _open_tab(page, "Phrase grounding")
    _upload(page, "ground", ASSETS / "astronaut.jpg")
    panel.get_by_label("Phrases").fill("a woman\nthe flag")
    result = _run(page, "ground")
    rows = result["rows"]
    assert len(rows) == 2, rows
    assert rows[0].startswith("a woman") and rows[1].startswith("the flag"), rows
    raw_rows = result["raw"].split("\n")
    assert len(raw_rows) == 2, raw_rows
    for raw, phrase in zip(raw_rows, ("a woman", "the flag")):
        assert raw.startswith(f"<grounding><phrase> {phrase}</phrase>"), raw_rows


# ----------------------------------------------------------------------------- describe a region


def test_draw_a_box_by_mouse_and_get_a_description(page):
    expect = _expect()
    panel = _open_tab(page, "Describe a region")
    panel.locator(".gallery button, table tbody tr, button.gallery").first.click()  # cat with one box
    canvas = _canvas(page, "refer")
    page.locator("#refer-image").get_by_role("button", name="Create box").click()
    area = canvas.bounding_box()
    # drag a second rectangle in the lower left of the image (the example's box is upper right)
    x0, y0 = area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.6
    _drag(page, x0, y0, x0 + 100, y0 + 70)
    page.locator("#refer-image").screenshot(path=str(SHOTS / "refer-drawn.png"))
    result = _run(page, "refer")
    rows = result["rows"]
    assert len(rows) == 2 and all(r.startswith(f"Box {k} It is") for k, r in enumerate(rows, 1)), rows  # numbered

    # the description is linked to its box: hovering the phrase highlights the box
    phrase = page.locator("#refer-result span.k2-ph").nth(1)
    box_of_phrase = page.locator(f'#refer-result rect.k2-box[data-e="{phrase.get_attribute("data-e")}"]')
    expect(box_of_phrase).to_have_css("stroke-width", "3px", timeout=UI_TIMEOUT_MS)
    phrase.hover()
    expect(box_of_phrase, "hovering a phrase does not highlight its box").to_have_css(
        "stroke-width", "6px", timeout=UI_TIMEOUT_MS)
    colour = _css_rgb(re.search(r"--c:\s*(#[0-9a-fA-F]{6})", phrase.get_attribute("style"))[1])
    expect(phrase, "the hovered phrase is not highlighted").to_have_css("background-color", colour,
                                                                        timeout=UI_TIMEOUT_MS)
    # and the other way round: hovering the other box highlights its phrase only
    other = page.locator("#refer-result span.k2-ph").nth(0)
    page.locator(f'#refer-result rect.k2-box[data-e="{other.get_attribute("data-e")}"]').hover()
    other_colour = _css_rgb(re.search(r"--c:\s*(#[0-9a-fA-F]{6})", other.get_attribute("style"))[1])
    expect(other, "hovering a box does not highlight its phrase").to_have_css(
        "background-color", other_colour, timeout=UI_TIMEOUT_MS)
    expect(phrase, "a phrase stays highlighted while another box is hovered").to_have_css(
        "background-color", TRANSPARENT, timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "refer-result.png"), full_page=True)


def _phone_photo(folder: Path) -> tuple[Path, tuple[int, int], tuple[int, int, int, int]]:
    """A JPEG stored landscape (480 x 240) with EXIF orientation 6, so that it is shown upright as
    240 x 480 with a red square low on the right; returns (path, upright size, the square's box)."""
    size, red = (240, 480), (120, 300, 200, 380)
    upright = Image.new("RGB", size, (128, 128, 128))
    upright.paste((255, 0, 0), red)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    path = folder / "phone.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)  # stored counter-clockwise
    stored = Image.open(path)
    assert stored.size == (480, 240)
    assert ImageOps.exif_transpose(stored).getpixel((160, 340))[0] > 200  # a viewer shows the square there
    return path, size, red


_RED_ON_CANVAS = """(sel) => {
  const c = document.querySelector(sel);
  if (!c || !c.width) return false;
  const {data, width, height} = c.getContext('2d').getImageData(0, 0, c.width, c.height);
  const red = [Infinity, Infinity, -1, -1], grey = [Infinity, Infinity, -1, -1];
  const grow = (b, x, y) => { b[0] = Math.min(b[0], x); b[1] = Math.min(b[1], y);
                              b[2] = Math.max(b[2], x + 1); b[3] = Math.max(b[3], y + 1); };
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    const i = 4 * (y * width + x), [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    if (r > 200 && g < 60 && b < 60) grow(red, x, y);
    else if (Math.abs(r - 128) < 20 && Math.abs(g - 128) < 20 && Math.abs(b - 128) < 20) grow(grey, x, y);
  }
  if (red[2] < 0 || grey[2] < 0) return false;
  const s = c.getBoundingClientRect().width / c.width;  // canvas pixels -> CSS pixels
  return {red: red.map(v => v * s), image: [Math.min(red[0], grey[0]), Math.min(red[1], grey[1]),
                                            Math.max(red[2], grey[2]), Math.max(red[3], grey[3])].map(v => v * s)};
}"""


def test_a_box_drawn_on_an_exif_rotated_photo_is_where_it_was_drawn(page, tmp_path):
    path, (width, height), red = _phone_photo(tmp_path)
    _open_tab(page, "Describe a region")
    _upload(page, "refer", path)
    found = _wait_js(page, _RED_ON_CANVAS, "#refer-image canvas", "the photo's red square was not shown")
    # the browser shows the photo upright, as a phone's gallery does: tall, the square low on the right
    ix1, iy1, ix2, iy2 = found["image"]
    scale = (ix2 - ix1) / width
    assert abs((iy2 - iy1) / scale - height) <= 3, f"the photo is not shown upright: {found}"
    shown_red = [(found["red"][k] - (ix1, iy1)[k % 2]) / scale for k in range(4)]
    assert _near(shown_red, red, (3, 3)), (shown_red, red)

    # drag a box over the red square as the user sees it
    area = page.locator("#refer-image canvas").bounding_box()
    page.locator("#refer-image").get_by_role("button", name="Create box").click()
    rx1, ry1, rx2, ry2 = found["red"]
    _drag(page, area["x"] + rx1, area["y"] + ry1, area["x"] + rx2, area["y"] + ry2)
    page.locator("#refer-image").screenshot(path=str(SHOTS / "refer-exif-drawn.png"))
    result = _run(page, "refer")
    assert result["view_box"] == f"0 0 {width} {height}", "the model did not see the photo upright"
    (box,) = result["boxes"]["Box 1 · It"]  # the drawn box, on the grid of 32 x 32 patches
    assert _near(box, red, (width / 32 + 3, height / 32 + 3)), f"the box {box} is not where it was drawn: {red}"
    annotated = _png(page, result["png"]).convert("RGB")
    assert annotated.size == (width, height)
    assert annotated.getpixel((160, 340))[0] > 200 and annotated.getpixel((160, 340))[1] < 80  # the red square
    page.screenshot(path=str(SHOTS / "refer-exif-result.png"), full_page=True)


def test_an_exif_rotated_photo_is_upright_in_a_plain_upload_tab(page, tmp_path):
    path, (width, height), red = _phone_photo(tmp_path)
    panel = _open_tab(page, "Caption")
    _upload(page, "caption", path)
    panel.get_by_role("radio", name="Brief (grounded)").check()
    result = _run(page, "caption")
    assert result["view_box"] == f"0 0 {width} {height}", "the model did not see the photo upright"
    annotated = _png(page, result["png"]).convert("RGB")
    assert annotated.size == (width, height)
    assert annotated.getpixel((160, 340))[0] > 200 and annotated.getpixel((160, 340))[1] < 80  # the red square


# ----------------------------------------------------------------------------- ask


def test_ask_without_a_box(page):
    panel = _open_tab(page, "Ask")
    _upload(page, "ask", ASSETS / "rocket.jpg")
    panel.get_by_label("Question").fill("What is special about this image?")
    result = _run(page, "ask")
    # the answer alone in the page (the raw output keeps the prompt), which the raw output ends with
    assert "Question" not in result["caption"] and "Answer" not in result["caption"], result["caption"]
    assert result["raw"].startswith("<grounding> Question: What is special about this image? Answer:"), result["raw"]
    answer = re.sub(r"<[^>]+>", "", result["raw"].split(" Answer:", 1)[1]).split()
    assert result["caption"].split() == answer, (result["caption"], result["raw"])


def test_ask_about_a_drawn_box(page):
    panel = _open_tab(page, "Ask")
    _upload(page, "ask", ASSETS / "cat.jpg")
    drawn = (40, 30, 300, 250)
    _draw_box(page, "ask", (451, 300), drawn)
    panel.get_by_label("Question").fill("What is [this animal] doing?")
    result = _run(page, "ask")
    assert "Question" not in result["caption"], result["caption"]  # the answer alone
    assert result["raw"].startswith("<grounding> Question: What is<phrase> this animal</phrase><object><patch_index_"), \
        result["raw"]
    (box,) = result["boxes"]["Box 1 · this animal"]  # numbered as the box drawn
    assert _near(box, drawn, (451 / 32 + 4, 300 / 32 + 4)), f"the box {box} is not where it was drawn: {drawn}"


def test_a_failed_run_shows_its_message_where_the_result_goes_and_clears_the_old_result(page):
    expect = _expect()
    panel = _open_tab(page, "Ask")
    _upload(page, "ask", ASSETS / "rocket.jpg")
    question = panel.get_by_label("Question")
    question.fill("What is special about this image?")
    _run(page, "ask")
    question.fill("Is it < 100 m tall?")
    page.locator("#ask-run").click()
    notice = page.locator("#ask-result .k2-error")
    expect(notice, "the error is not shown where the result goes").to_contain_text(
        "The question contains '<'", timeout=RESULT_TIMEOUT_MS)
    expect(notice).to_contain_text("please write it in words")
    expect(page.locator("#ask-result .k2-caption"), "the old caption is still shown").to_have_count(0)
    expect(page.locator("#ask-result svg rect.k2-box"), "the old boxes are still shown").to_have_count(0)
    expect(page.locator("#ask-png a.download-link"), "the old download is still offered").to_have_count(0)
    expect(page.locator("[data-testid=toast-body]"), "the message is (also) a toast over the header").to_have_count(0)
    assert _raw_output(page) == ""
    page.screenshot(path=str(SHOTS / "ask-error.png"), full_page=True)
    question.fill("What is special about this image?")  # and the next run works
    assert _run(page, "ask")["caption"]


def test_the_banner_is_a_styled_alert_whose_arrival_does_not_move_the_page(page):
    context = page.context.browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        fresh = context.new_page()
        held = []  # the page-load event's queue request, held until the page has been measured
        fresh.route("**/gradio_api/queue/join*", lambda route: held.append(route))
        fresh.goto(page.url)
        tabs = fresh.get_by_role("tablist").first
        tabs.wait_for(timeout=RESULT_TIMEOUT_MS)
        deadline = time.monotonic() + RESULT_TIMEOUT_MS / 1000
        while not held:
            assert time.monotonic() < deadline, "the page sent no event to the queue"
            fresh.wait_for_timeout(50)
        before = tabs.bounding_box()["y"]
        fresh.unroute("**/gradio_api/queue/join*")  # (lets the held requests go on)
        banner = fresh.get_by_role("alert").filter(has_text="tiny checkpoint with random weights")
        _expect()(banner).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        assert banner.evaluate("e => getComputedStyle(e).backgroundColor") != TRANSPARENT  # styled, not plain text
        assert abs(tabs.bounding_box()["y"] - before) < 2, (before, tabs.bounding_box()["y"])
        fresh.screenshot(path=str(SHOTS / "banner.png"))
    finally:
        context.close()


def test_an_empty_result_column_says_where_the_result_will_appear(page):
    fresh = page.context.browser.new_context().new_page()  # a first look (this module's page ran every tab)
    try:
        fresh.goto(page.url)
        fresh.get_by_role("tab", name="Phrase grounding", exact=True).click()
        _expect()(fresh.locator("#ground-result .k2-notice")).to_contain_text("The result appears here",
                                                                             timeout=RESULT_TIMEOUT_MS)
    finally:
        fresh.context.close()


PHONE = dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=2)
TAB_TITLES = ("Caption", "Phrase grounding", "Detect", "Describe a region", "Ask", "Free prompt")


def test_on_a_phone_every_tab_shows_the_result_comes_into_view_and_a_tap_highlights(page):
    expect = _expect()
    context = page.context.browser.new_context(**PHONE)
    try:
        phone = context.new_page()
        phone.set_default_timeout(UI_TIMEOUT_MS)
        phone.goto(page.url)
        phone.get_by_text("tiny checkpoint with random weights").wait_for(timeout=RESULT_TIMEOUT_MS)
        for title in TAB_TITLES:  # in sight, not behind a "more tabs" menu
            expect(phone.get_by_role("tab", name=title, exact=True), f"the tab {title!r} is hidden").to_be_visible()
        expect(phone.locator("footer").get_by_text("Use via API"), "no API link in the footer").to_be_visible()
        panel = _open_tab(phone, "Describe a region")
        panel.locator(".gallery button, table tbody tr, button.gallery").first.tap()  # the cat with one box
        _canvas(phone, "refer")
        phone.locator("#refer-run").tap()
        result = phone.locator("#refer-result")
        expect(result.locator(".k2-caption"), "no result").to_be_visible(timeout=RESULT_TIMEOUT_MS)
        expect(result.locator(".k2-stage"), "the result is not scrolled into view").to_be_in_viewport()
        phrase = result.locator("span.k2-ph").first
        box = result.locator(f'rect.k2-box[data-e="{phrase.get_attribute("data-e")}"]')
        phrase.tap()
        expect(box, "tapping a phrase does not highlight its box").to_have_css("stroke-width", "6px")
        phone.screenshot(path=str(SHOTS / "phone.png"))
    finally:
        context.close()


# ----------------------------------------------------------------------------- free prompt


# The box annotator's colours for the 1st and 2nd box drawn on an image without boxes (its palette,
# gradio_image_annotation's frontend: a new box takes the colour at the number of boxes already there).
FIRST_DRAWN, SECOND_DRAWN = "#ffa84d", "#5cacee"  # rgb(255, 168, 77), rgb(92, 172, 238)
TOP_LEFT, BOTTOM_RIGHT = (20, 20, 160, 120), (280, 170, 430, 285)  # pixel boxes on cat.jpg (451 x 300)

_ENTITIES = """(tab) => [...document.querySelectorAll(`#${tab}-result span.k2-ph`)].map(span => {
  const rect = document.querySelector(`#${tab}-result rect.k2-box[data-e="${span.dataset.e}"]`);
  const badge = span.previousElementSibling;
  return {text: span.innerText, colour: span.style.getPropertyValue('--c').trim(),
          number: badge && badge.classList.contains('k2-boxno') ? badge.innerText : null,
          title: rect && rect.querySelector('title').textContent, stroke: rect && rect.getAttribute('stroke'),
          box: rect && ['x', 'y', 'width', 'height'].map(k => parseFloat(rect.getAttribute(k)))};
})"""


def _entities(page, tab: str) -> list[dict]:
    """Each linked phrase of the result, in text order: its text, colour, and its box's stroke and (x1, y1,
    x2, y2)."""
    found = page.evaluate(_ENTITIES, tab)
    for e in found:
        if e["box"]:
            x, y, w, h = e["box"]
            e["box"] = (x, y, x + w, y + h)
    return found


CELL = (451 / 32 + 4, 300 / 32 + 4)  # a box comes back snapped to the 32 x 32 grid


def test_two_drawn_boxes_are_bound_to_the_brackets_in_the_order_drawn_in_their_colours(page):
    panel = _open_tab(page, "Free prompt")
    _upload(page, "prompt", ASSETS / "cat.jpg")
    _draw_box(page, "prompt", (451, 300), TOP_LEFT)
    _draw_box(page, "prompt", (451, 300), BOTTOM_RIGHT)
    panel.get_by_label("Prompt").fill("[first box] and [second box]")
    result = _run(page, "prompt")
    first, second = _entities(page, "prompt")[:2]
    assert (first["text"], second["text"]) == ("first box", "second box"), result["raw"]
    assert _near(first["box"], TOP_LEFT, CELL) and _near(second["box"], BOTTOM_RIGHT, CELL), (first, second)
    assert (first["colour"], first["stroke"]) == (FIRST_DRAWN, FIRST_DRAWN), first
    assert (second["colour"], second["stroke"]) == (SECOND_DRAWN, SECOND_DRAWN), second
    # numbered as drawn, in the text and on the image
    assert (first["number"], first["title"]) == ("Box 1", "Box 1 · first box"), first
    assert (second["number"], second["title"]) == ("Box 2", "Box 2 · second box"), second


def test_region_descriptions_come_in_the_order_the_boxes_were_drawn_in_their_colours(page):
    _open_tab(page, "Describe a region")
    _upload(page, "refer", ASSETS / "cat.jpg")
    _draw_box(page, "refer", (451, 300), TOP_LEFT)
    _draw_box(page, "refer", (451, 300), BOTTOM_RIGHT)
    result = _run(page, "refer")
    assert len(result["rows"]) == 2, result["rows"]
    first, second = (e for e in _entities(page, "refer") if e["text"] == "It")
    assert _near(first["box"], TOP_LEFT, CELL) and _near(second["box"], BOTTOM_RIGHT, CELL), (first, second)
    assert (first["colour"], second["colour"]) == (FIRST_DRAWN, SECOND_DRAWN)
    assert (first["number"], first["title"], second["number"], second["title"]) == (
        "Box 1", "Box 1 · It", "Box 2", "Box 2 · It"), (first, second)



@pytest.mark.parametrize("grounded", [True, False], ids=["grounded", "not-grounded"])
def test_free_prompt_with_and_without_grounding(page, grounded):
    panel = _open_tab(page, "Free prompt")
    _upload(page, "prompt", ASSETS / "cameraman.jpg")
    panel.get_by_label("Prompt").fill("A black and white photo of")
    checkbox = panel.get_by_label("Ground the output (<grounding>)")
    checkbox.set_checked(grounded)
    _expect()(checkbox).to_be_checked(checked=grounded, timeout=UI_TIMEOUT_MS)
    result = _run(page, "prompt")
    assert result["caption"].startswith("A black and white photo of"), result["caption"]
    assert result["raw"].startswith("<grounding>") == grounded, result["raw"]
    assert result["raw"].removeprefix("<grounding>").lstrip().startswith("A black and white photo of"), result["raw"]


# ----------------------------------------------------------------------------- detect


def _set_number(page, label: str, value: str) -> None:
    number = page.get_by_label(f"number input for {label}")
    number.fill(value)
    number.press("Enter")


def test_each_tab_shows_only_the_settings_its_task_takes(page):
    expect = _expect()
    for title in TAB_TITLES:
        page.get_by_role("tab", name=title, exact=True).click()
        panel = page.locator("[role=tabpanel]:visible")
        expect(panel).to_have_count(1)
        generation = panel.get_by_role("button", name="Generation settings")
        detection = panel.get_by_label("number input for Box threshold")
        if title == "Detect":  # its own settings only: the filters in the open
            expect(generation, "generation settings shown on Detect").to_have_count(0)
            expect(detection).to_be_visible()
        else:
            expect(generation, f"no generation settings on {title!r}").to_be_visible()
            expect(detection, f"detection settings on {title!r}").to_have_count(0)
    # the heat-map switch sits over the image it changes, in the result column
    page.get_by_role("tab", name="Detect", exact=True).click()
    switch, result = page.locator("#detect-heat").bounding_box(), page.locator("#detect-result").bounding_box()
    assert abs(switch["x"] - result["x"]) < 40 and switch["y"] < result["y"], (switch, result)


def test_example_tables_show_each_phrase_on_its_line_and_no_raw_true(page):
    expect = _expect()
    panel = _open_tab(page, "Detect")
    cell = panel.locator('td[data-testid="dataset-cell-0-1"]')
    expect(cell).to_be_visible()
    assert cell.inner_text() == "a cup\na spoon", cell.inner_text()  # (as typed, not "a cup a spoon")
    panel = _open_tab(page, "Free prompt")
    row = panel.locator('tr:has(td[data-testid^="dataset-cell-0-"])')
    expect(row).to_be_visible()
    assert [c.inner_text().strip() for c in row.locator("td").all()][1:] == ["A black and white photo of"]  # no "true"


def test_detect_then_the_threshold_slider_refilters_at_once(page):
    expect = _expect()
    panel = _open_tab(page, "Detect")
    _upload(page, "detect", ASSETS / "coffee.jpg")
    panel.get_by_label("Phrases").fill("a cup")
    _set_number(page, "Box threshold", "0")
    _set_number(page, "Max boxes per phrase", "4")
    name = page.locator("#detect-png td.filename")
    before = name.get_attribute("aria-label") if name.count() else ""
    page.locator("#detect-run").click()
    done = _wait_js(page, _FINISHED, ["detect", before], "no detect result in #detect-png", RESULT_TIMEOUT_MS)
    assert "error" not in done, done
    boxes = page.locator("#detect-result rect.k2-box")
    expect(boxes, "threshold 0 and at most 4 boxes: 4 boxes").to_have_count(4, timeout=UI_TIMEOUT_MS)
    titles = [t.text_content() for t in page.locator("#detect-result rect.k2-box title").all()]
    # each label carries its score, never a bare 0.00 for a small one (the tiny model's are ~1e-5)
    assert all(re.fullmatch(r"a cup · (\d\.\d\d|\d\.\de-\d+)", t) and "0.00" not in t for t in titles), titles
    _set_number(page, "Max boxes per phrase", "2")
    expect(boxes, "max boxes 2 did not re-filter the result").to_have_count(2, timeout=UI_TIMEOUT_MS)
    _set_number(page, "Box threshold", "1")
    expect(boxes, "threshold 1 did not re-filter the result").to_have_count(0, timeout=UI_TIMEOUT_MS)
    timing = page.locator("#detect-timing").inner_text()
    assert re.search(r"0 boxes kept of \d+ candidates, re-filtered without the model \(which took [\d.]+ s\) · the "
                     r"best scores \S+, under the box threshold 1: lower it to see boxes", timing), timing
    page.get_by_label("Show where the model looks").check()
    _wait_js(page, "(before) => (document.querySelector('#detect-png td.filename')?.getAttribute('aria-label') "
             "|| '') !== before", done["png"], "the heat map did not redraw the PNG")
    page.screenshot(path=str(SHOTS / "detect-heat.png"), full_page=True)
