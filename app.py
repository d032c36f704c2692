"""KOSMOS-2 Gradio demo: UI wiring only.

Prompts, validation, model loading and generation live in ``kosmos2.tasks``; the linked HTML view
in ``kosmos2.view``; drawing in ``kosmos2.draw``. The model loads lazily, once per process, on the
first page load or request. ``python app.py --tiny`` runs on the built-in tiny random checkpoint.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from gradio_image_annotation import image_annotator

from kosmos2 import draw, tasks, view

try:  # Hugging Face Spaces ZeroGPU: a GPU is attached only inside @spaces.GPU functions.
    import spaces

    on_gpu: Callable[[Callable], Callable] = spaces.GPU
except ImportError:
    def on_gpu(fn: Callable) -> Callable:
        return fn

log = logging.getLogger("kosmos2.app")
ASSETS = Path(__file__).resolve().parent / "assets"
QUEUE_MAX_SIZE = 32
CONCURRENCY_LIMIT = tasks.MAX_BATCH_SIZE  # waiting requests share batches (kosmos2.serving)
OUTPUT_MAX_AGE_S = 3600
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
OUTPUT_MAX_FILES = 64  # annotated PNGs kept in the private output folder (Gradio serves its own copy)
STREAM_INTERVAL_S = 0.15  # at most ~7 partial updates a second
TINY_BANNER = ("⚠️ Running on the built-in <b>tiny checkpoint with random weights</b>: outputs are random. "
               "Set <code>KOSMOS2_CHECKPOINT</code> / go online to get the real model.")
INT8_BANNER = ("🧪 <b>Experimental int8 mode</b> (<code>KOSMOS2_QUANTIZE=int8</code>): faster on CPU, but its "
               "quality has not been verified against the full-precision model.")
CAPTION_MODES = {"Brief (grounded)": "caption", "Detailed (grounded)": "detailed", "Brief, no grounding": "plain"}
BOX_HELP = ("To draw a box: click ⬚ *Create box* under the image (or press C), then drag on the image. "
            "Select a box and press Delete to remove it.")
# The uploaded file as it is (no conversion or re-encoding by Gradio): tasks.load_image checks and decodes it.
IMAGE_INPUT = dict(type="filepath", image_mode=None, height=360)
USER_ERROR = "Generation failed because of an internal error; please try again."


def _asset(name: str) -> str:
    return str(ASSETS / name)


def _annotator_value(value: dict | None) -> tuple[Any, list, int]:
    """(image, boxes, clockwise quarter turns) from an ``image_annotator`` value."""
    if not value:
        return None, [], 0
    return value.get("image"), value.get("boxes") or [], int(value.get("orientation") or 0)


class Runner:
    """Runs tasks for the UI and the API on one lazily loaded model."""

    def __init__(self, holder: tasks.ModelHolder) -> None:
        self.holder = holder
        self._out_dir: str | None = None
        self._lock = threading.Lock()

    def save_png(self, image: Any) -> str:
        """A fresh PNG file per request in this process's private output folder (removed at exit).

        The folder is pruned first: files older than ``OUTPUT_MAX_AGE_S`` go, then the oldest until
        fewer than ``OUTPUT_MAX_FILES`` remain (Gradio serves its own copy of each result).
        """
        with self._lock:
            if self._out_dir is None:
                self._out_dir = tempfile.mkdtemp(prefix="kosmos2-out-")
                atexit.register(shutil.rmtree, self._out_dir, ignore_errors=True)
            files = sorted(Path(self._out_dir).glob("*.png"), key=lambda p: p.stat().st_mtime)
            cutoff = time.time() - OUTPUT_MAX_AGE_S
            for i, old in enumerate(files):
                if old.stat().st_mtime < cutoff or len(files) - i >= OUTPUT_MAX_FILES:
                    old.unlink()
            return draw.save_png_tempfile(image, self._out_dir)

    def banner(self) -> dict:
        """Loads the model (first call) and shows the banner when the tiny checkpoint or the
        experimental int8 mode is in use."""
        loaded = self.holder.get()
        notes = [TINY_BANNER] * loaded.is_tiny + [INT8_BANNER] * (loaded.quantize == "int8")
        if not notes:
            return gr.update(visible=False)
        return gr.update(visible=True, value="".join(f'<div class="k2-banner">{n}</div>' for n in notes))

    def stream(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
               settings: tuple, quarter_turns: int = 0,
               min_interval_s: float | None = None) -> Iterator[tuple[Any, tasks.TaskResult]]:
        """Validated streaming run yielding (RGB image, result), partial results at most every
        ``min_interval_s`` (default ``STREAM_INTERVAL_S``); user errors become ``gr.Error`` with their
        message only, other errors a generic one (details go to the server log)."""
        try:
            request = tasks.build_request(task, image, text, boxes, grounding_on, quarter_turns)
            gen = tasks.GenerationSettings.from_user(*settings)
        except tasks.InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        try:
            loaded = self.holder.get()
            interval = STREAM_INTERVAL_S if min_interval_s is None else min_interval_s
            for result in tasks.run(loaded, request, gen, min_interval_s=interval):
                yield request.image, result
        except Exception:
            log.exception("generation failed for task %s", task)
            raise gr.Error(USER_ERROR, print_exception=False) from None

    def ui(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
           settings: tuple, quarter_turns: int = 0) -> Iterator[tuple]:
        """UI outputs: linked HTML, timing, raw text, entities JSON, annotated PNG (final step only)."""
        uri = None
        for shown, result in self.stream(task, image, text, boxes, grounding_on, settings, quarter_turns):
            uri = uri or view.image_data_uri(shown)
            png = self.save_png(draw.annotate(shown, result.annotations())) if result.done else gr.update()
            yield view.render(uri, result), result.timing_text(), result.raw, result.entities_json(), png

    def api(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
            settings: tuple) -> tuple[str, list, str]:
        """API outputs: caption, entities, path of the annotated PNG."""
        # no partial results: the API returns the final one only
        *_, (shown, result) = self.stream(task, image, text, boxes, grounding_on, settings, min_interval_s=math.inf)
        png = self.save_png(draw.annotate(shown, result.annotations()))
        return result.caption, result.entities_json(), png


def _settings_panel() -> list[gr.components.Component]:
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            max_new = gr.Slider(1, tasks.MAX_NEW_TOKENS_CAP, value=128, step=1, label="Max new tokens")
            decoding = gr.Radio(list(tasks.DECODING), value="greedy", label="Decoding")
            beams = gr.Slider(1, 8, value=3, step=1, label="Beams (beam search)")
        with gr.Row():
            temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature (sampling)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p (sampling)")
            ngram = gr.Slider(0, 10, value=0, step=1, label="No-repeat n-gram size (0 = off)")
    return [max_new, decoding, beams, temperature, top_p, ngram]


def _outputs(tab: str) -> list[gr.components.Component]:
    page = gr.HTML(label="Result", elem_id=f"{tab}-result")
    timing = gr.Markdown(elem_id=f"{tab}-timing")
    with gr.Accordion("Raw model output (with tags)", open=False):
        raw = gr.Textbox(show_label=False, lines=3)
    with gr.Accordion("Entities (JSON)", open=False):
        entities = gr.JSON(show_label=False)
    download = gr.File(label="Annotated image (PNG)", elem_id=f"{tab}-png")
    return [page, timing, raw, entities, download]


def _box_input(tab: str, label: str) -> image_annotator:
    """An image on which the user drags rectangles, with a how-to line under it."""
    boxed = image_annotator(label=label, image_type="filepath", sources=["upload"], disable_edit_boxes=True,
                            height=360, elem_id=f"{tab}-image")
    gr.Markdown(BOX_HELP)
    return boxed


def build_demo(holder: tasks.ModelHolder | None = None) -> gr.Blocks:
    """The demo's Blocks. Nothing is loaded here: the model loads on first use."""
    runner = Runner(holder or tasks.ModelHolder())
    events = dict(concurrency_limit=CONCURRENCY_LIMIT, concurrency_id="kosmos2")

    def ui_fn(task: str | None, with_text: bool, with_boxes: bool) -> Callable:
        @on_gpu
        def fn(*args: Any) -> Iterator[tuple]:
            args = list(args)
            mode = CAPTION_MODES[args.pop(0)] if task is None else task
            image, boxes, turns = _annotator_value(args.pop(0)) if with_boxes else (args.pop(0), [], 0)
            text = args.pop(0) if with_text else None
            grounding_on = args.pop(0) if mode == "prompt" else True
            yield from runner.ui(mode, image, text, boxes, grounding_on, tuple(args), turns)

        return fn

    cache = (OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)
    with gr.Blocks(title="KOSMOS-2: grounded multimodal demo", delete_cache=cache) as demo:
        gr.Markdown("# KOSMOS-2: grounding language in images\nCaptions, phrase grounding, region descriptions "
                    "and questions with boxes, by Microsoft's KOSMOS-2. Hover a phrase or a box to see its partner.")
        banner = gr.HTML(visible=False)
        settings = _settings_panel()

        with gr.Tab("Caption", id="caption"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image", elem_id="caption-image", **IMAGE_INPUT)
                    mode = gr.Radio(list(CAPTION_MODES), value="Brief (grounded)", label="Caption")
                    go = gr.Button("Describe", variant="primary", elem_id="caption-run")
                with gr.Column():
                    out = _outputs("caption")
            gr.Examples([[_asset("cat.jpg"), "Brief (grounded)"], [_asset("coffee.jpg"), "Detailed (grounded)"],
                         [_asset("rocket.jpg"), "Brief (grounded)"]], [image, mode])
            go.click(ui_fn(None, False, False), [mode, image, *settings], out, api_visibility="private", **events)

        with gr.Tab("Phrase grounding", id="ground"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image", elem_id="ground-image", **IMAGE_INPUT)
                    phrases = gr.Textbox(label="Phrases (one per line)", lines=3, max_length=tasks.MAX_TEXT_CHARS)
                    go = gr.Button("Find", variant="primary", elem_id="ground-run")
                with gr.Column():
                    out = _outputs("ground")
            gr.Examples([[_asset("astronaut.jpg"), "a woman\nthe flag"],
                         [_asset("coffee.jpg"), "a cup of coffee\na spoon"]], [image, phrases])
            go.click(ui_fn("ground", True, False), [image, phrases, *settings], out, api_visibility="private",
                     **events)

        with gr.Tab("Describe a region", id="refer"):
            with gr.Row():
                with gr.Column():
                    boxed = _box_input("refer", "Image: draw boxes")
                    go = gr.Button("Describe the boxes", variant="primary", elem_id="refer-run")
                with gr.Column():
                    out = _outputs("refer")
            gr.Examples([[{"image": _asset("cat.jpg"), "boxes": [
                {"xmin": 280, "ymin": 90, "xmax": 360, "ymax": 180, "label": "", "color": (230, 25, 75)}]}]], [boxed])
            go.click(ui_fn("refer", False, True), [boxed, *settings], out, api_visibility="private", **events)

        with gr.Tab("Ask", id="ask"):
            with gr.Row():
                with gr.Column():
                    boxed = _box_input("ask", "Image (optionally draw a box)")
                    question = gr.Textbox(label="Question", max_length=tasks.MAX_TEXT_CHARS,
                                          info="With a box, put the words it refers to in [brackets].")
                    go = gr.Button("Ask", variant="primary", elem_id="ask-run")
                with gr.Column():
                    out = _outputs("ask")
            gr.Examples([[{"image": _asset("rocket.jpg"), "boxes": []}, "What is special about this image?"],
                         [{"image": _asset("cat.jpg"), "boxes": [
                             {"xmin": 20, "ymin": 10, "xmax": 440, "ymax": 295, "label": "", "color": (60, 180, 75)}]},
                          "What is [this animal] doing?"],
                         [{"image": _asset("coffee.jpg"), "boxes": [
                             {"xmin": 150, "ymin": 80, "xmax": 470, "ymax": 330, "label": "", "color": (67, 99, 216)}]},
                          "What is in [this cup]?"]], [boxed, question])
            go.click(ui_fn("ask", True, True), [boxed, question, *settings], out, api_visibility="private",
                     **events)

        with gr.Tab("Free prompt", id="prompt"):
            with gr.Row():
                with gr.Column():
                    boxed = _box_input("prompt", "Image (optionally draw boxes)")
                    prompt = gr.Textbox(label="Prompt", max_length=tasks.MAX_TEXT_CHARS,
                                        info="Plain text; with boxes, put the words each refers to in [brackets].")
                    grounding_on = gr.Checkbox(value=True, label="Ground the output (<grounding>)")
                    go = gr.Button("Generate", variant="primary", elem_id="prompt-run")
                with gr.Column():
                    out = _outputs("prompt")
            gr.Examples([[{"image": _asset("cameraman.jpg"), "boxes": []}, "A black and white photo of", True]],
                        [boxed, prompt, grounding_on])
            go.click(ui_fn("prompt", True, True), [boxed, prompt, grounding_on, *settings], out,
                     api_visibility="private", **events)

        _api_endpoints(runner, events)
        demo.load(runner.banner, None, banner, api_visibility="private")
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


def _api_endpoints(runner: Runner, events: dict) -> None:
    """One named endpoint per task for ``gradio_client``: (image, text, boxes, settings...) ->
    (caption, entities, annotated PNG). Boxes are pixel boxes as "x1,y1,x2,y2; ..." or a JSON list."""
    with gr.Column(visible=False):
        image = gr.File(type="binary", label="image")  # reaches tasks.load_image undecoded, no temp file
        text = gr.Textbox(value="", label="text")
        boxes = gr.JSON(value=[], label="boxes")
        grounding_on = gr.Checkbox(value=True, label="grounding")
        max_new = gr.Number(value=128, label="max_new_tokens")
        decoding = gr.Textbox(value="greedy", label="decoding")
        beams = gr.Number(value=3, label="num_beams")
        temperature = gr.Number(value=0.7, label="temperature")
        top_p = gr.Number(value=0.9, label="top_p")
        ngram = gr.Number(value=0, label="no_repeat_ngram_size")
        caption = gr.Textbox(label="caption")
        entities = gr.JSON(label="entities")
        annotated = gr.Image(type="filepath", label="annotated")
        trigger = gr.Button()
    settings = [max_new, decoding, beams, temperature, top_p, ngram]
    for task in tasks.TASKS:
        trigger.click(on_gpu(_api_fn(runner, task)), [image, text, boxes, grounding_on, *settings],
                      [caption, entities, annotated], api_name=task, api_description=tasks.TASKS[task].description,
                      **events)


def _api_fn(runner: Runner, task: str) -> Callable:
    """The endpoint function of ``task``; its parameter names are the API's keyword arguments."""

    def fn(image: bytes | None, text: str, boxes: Any, grounding: bool, max_new_tokens: float, decoding: str,
           num_beams: float, temperature: float, top_p: float, no_repeat_ngram_size: float) -> tuple[str, list, str]:
        settings = (max_new_tokens, decoding, num_beams, temperature, top_p, no_repeat_ngram_size)
        return runner.api(task, image, text, boxes, grounding, settings)

    return fn


def main(argv: list[str] | None = None) -> None:
    """``python app.py [--tiny] [--checkpoint ...] [--share]``: serve the demo (local only unless ``--share``)."""
    parser = argparse.ArgumentParser(description="KOSMOS-2 Gradio demo")
    parser.add_argument("--tiny", action="store_true", help="use the built-in tiny random checkpoint")
    parser.add_argument("--checkpoint", help="checkpoint folder or hub id (default: $KOSMOS2_CHECKPOINT)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    served = demo
    if args.tiny or args.checkpoint:
        served = build_demo(tasks.ModelHolder(args.checkpoint, force_tiny=args.tiny))
    served.launch(share=args.share, max_file_size=MAX_UPLOAD_BYTES)


demo = build_demo()

if __name__ == "__main__":
    main()
