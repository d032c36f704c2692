"""KOSMOS-2 Gradio demo: UI wiring only, built from the task table and the settings spec.

Tasks, prompts and their examples are ``kosmos2.demo.tasks.TASKS``; generation settings are
``kosmos2.demo.settings.SETTINGS``; validation, loading and the runner live in ``kosmos2.demo``.
The model loads lazily, once per process, on the first page load or request. ``python app.py --tiny``
runs on the built-in tiny random checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# Hugging Face Spaces ZeroGPU: a GPU is attached only inside @spaces.GPU functions; `spaces` must be
# imported before torch (which kosmos2.demo imports).
try:
    import spaces

    on_gpu: Callable[[Callable], Callable] = spaces.GPU
except ImportError:
    def on_gpu(fn: Callable) -> Callable:
        return fn

import gradio as gr
from gradio_image_annotation import image_annotator

from kosmos2.demo import draw, view
from kosmos2.demo.inputs import MAX_TEXT_CHARS, InputError
from kosmos2.demo.loading import MAX_BATCH_SIZE, ModelHolder
from kosmos2.demo.results import TaskResult, run
from kosmos2.demo.settings import SETTINGS, GenerationSettings, Setting
from kosmos2.demo.tasks import TASKS, Example, Task, build_request, find_task

log = logging.getLogger("kosmos2.app")
ASSETS = Path(__file__).resolve().parent / "assets"
QUEUE_MAX_SIZE = 32
CONCURRENCY_LIMIT = MAX_BATCH_SIZE  # waiting requests share batches (kosmos2.serving)
OUTPUT_MAX_AGE_S = 3600
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
OUTPUT_MAX_FILES = 64  # annotated PNGs kept in the private output folder (Gradio serves its own copy)
STREAM_INTERVAL_S = 0.15  # at most ~7 partial updates a second
SETTINGS_PER_ROW = 3
TINY_BANNER = ("⚠️ Running on the built-in <b>tiny checkpoint with random weights</b>: outputs are random. "
               "Set <code>KOSMOS2_CHECKPOINT</code> / go online to get the real model.")
INT8_BANNER = ("🧪 <b>Experimental int8 mode</b> (<code>KOSMOS2_QUANTIZE=int8</code>): faster on CPU, but its "
               "quality has not been verified against the full-precision model.")
BOX_HELP = ("To draw a box: click ⬚ *Create box* under the image (or press C), then drag on the image. "
            "Select a box and press Delete to remove it.")
# The uploaded file as it is (no conversion or re-encoding by Gradio): the demo's load_image checks and decodes it.
IMAGE_INPUT = dict(type="filepath", image_mode=None, height=360)
USER_ERROR = "Generation failed because of an internal error; please try again."


class Runner:
    """Runs tasks for the UI and the API on one lazily loaded model."""

    def __init__(self, holder: ModelHolder, tasks: Mapping[str, Task] = TASKS) -> None:
        self.holder = holder
        self.tasks = tasks
        self.outputs = draw.OutputFolder(OUTPUT_MAX_FILES, OUTPUT_MAX_AGE_S)

    def banner(self) -> dict:
        """Loads the model (first call) and shows the banner when the tiny checkpoint or the
        experimental int8 mode is in use."""
        loaded = self.holder.get()
        notes = [TINY_BANNER] * loaded.is_tiny + [INT8_BANNER] * (loaded.quantize == "int8")
        if not notes:
            return gr.update(visible=False)
        return gr.update(visible=True, value="".join(f'<div class="k2-banner">{n}</div>' for n in notes))

    def stream(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
               settings: Mapping[str, Any], quarter_turns: int = 0,
               min_interval_s: float | None = None) -> Iterator[tuple[Any, TaskResult]]:
        """Validated streaming run yielding (RGB image, result), partial results at most every
        ``min_interval_s`` (default ``STREAM_INTERVAL_S``); ``settings`` by name. User errors become
        ``gr.Error`` with their message only, other errors a generic one (details go to the server log)."""
        try:
            request = build_request(find_task(task, self.tasks), image, text, boxes, grounding_on, quarter_turns)
            gen = GenerationSettings.from_user(**settings)
            loaded = self.holder.get()
            interval = STREAM_INTERVAL_S if min_interval_s is None else min_interval_s
            for result in run(loaded, request, gen, min_interval_s=interval):
                yield request.image, result
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception:
            log.exception("task %s failed", task)
            raise gr.Error(USER_ERROR, print_exception=False) from None

    def ui(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
           settings: Mapping[str, Any], quarter_turns: int = 0) -> Iterator[tuple]:
        """UI outputs: linked HTML, timing, raw text, entities JSON, annotated PNG (final step only)."""
        uri = None
        for shown, result in self.stream(task, image, text, boxes, grounding_on, settings, quarter_turns):
            uri = uri or view.image_data_uri(shown)
            png = self.outputs.save(draw.annotate(shown, result.annotations())) if result.done else gr.update()
            yield view.render(uri, result), result.timing_text(), result.raw, result.entities_json(), png

    def api(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
            settings: Mapping[str, Any]) -> tuple[str, list, str]:
        """API outputs: caption, entities, path of the annotated PNG."""
        # no partial results: the API returns the final one only
        *_, (shown, result) = self.stream(task, image, text, boxes, grounding_on, settings, min_interval_s=math.inf)
        return result.caption, result.entities_json(), self.outputs.save(draw.annotate(shown, result.annotations()))


# --------------------------------------------------------------------------- components


def _setting_input(s: Setting) -> gr.components.Component:
    """The UI control of one setting."""
    if s.choices:
        return gr.Radio(list(s.choices), value=s.default, label=s.label, info=s.help)
    return gr.Slider(s.minimum, s.maximum, value=s.default, step=s.step, label=s.label, info=s.help)


def _settings_panel() -> dict[str, gr.components.Component]:
    names = list(SETTINGS)
    controls: dict[str, gr.components.Component] = {}
    with gr.Accordion("Generation settings", open=False):
        for start in range(0, len(names), SETTINGS_PER_ROW):
            with gr.Row():
                for name in names[start:start + SETTINGS_PER_ROW]:
                    controls[name] = _setting_input(SETTINGS[name])
    return controls


def _outputs(tab: str) -> list[gr.components.Component]:
    page = gr.HTML(label="Result", elem_id=f"{tab}-result")
    timing = gr.Markdown(elem_id=f"{tab}-timing")
    with gr.Accordion("Raw model output (with tags)", open=False):
        raw = gr.Textbox(show_label=False, lines=3)
    with gr.Accordion("Entities (JSON)", open=False):
        entities = gr.JSON(show_label=False)
    download = gr.File(label="Annotated image (PNG)", elem_id=f"{tab}-png")
    return [page, timing, raw, entities, download]


def _image_input(tab: str, task: Task) -> gr.components.Component:
    """A plain image upload, or an image on which the user drags rectangles (with a how-to line)."""
    if task.boxes == "none":
        return gr.Image(label=task.image_label, elem_id=f"{tab}-image", **IMAGE_INPUT)
    boxed = image_annotator(label=task.image_label, image_type="filepath", sources=["upload"],
                            disable_edit_boxes=True, height=360, elem_id=f"{tab}-image")
    gr.Markdown(BOX_HELP)
    return boxed


def _example_image(example: Example, boxed: bool) -> Any:
    path = str(ASSETS / example.image)
    if not boxed:
        return path
    colours = draw.entity_colours(len(example.boxes))
    return {"image": path, "boxes": [
        {"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2, "label": "", "color": draw.hex_to_rgb(colour)}
        for (x1, y1, x2, y2), colour in zip(example.boxes, colours)]}


def _annotator_value(value: dict | None) -> tuple[Any, list, int]:
    """(image, boxes, clockwise quarter turns) from an ``image_annotator`` value."""
    if not value:
        return None, [], 0
    return value.get("image"), value.get("boxes") or [], int(value.get("orientation") or 0)


# --------------------------------------------------------------------------- tabs and endpoints


def _tab(runner: Runner, tasks: list[Task], settings: dict[str, gr.components.Component], events: dict) -> None:
    """One tab for ``tasks`` (several share a tab through a radio of their ``choice`` labels)."""
    first = tasks[0]
    for other in tasks[1:]:  # one set of inputs serves the whole tab
        if (other.text, other.boxes != "none", other.grounding_option) != (first.text, first.boxes != "none",
                                                                          first.grounding_option):
            raise ValueError(f"tasks {first.name!r} and {other.name!r} share the tab {first.tab!r} but not its inputs")
    tab, boxed = first.name, first.boxes != "none"
    by_choice = {t.choice: t.name for t in tasks}
    with gr.Tab(first.tab, id=tab):
        with gr.Row():
            with gr.Column():
                inputs = {"image": _image_input(tab, first)}
                if len(tasks) > 1:
                    inputs["choice"] = gr.Radio(list(by_choice), value=first.choice, label=first.tab)
                if first.text is not None:
                    inputs["text"] = gr.Textbox(label=first.text, lines=first.text_lines, max_length=MAX_TEXT_CHARS,
                                                info=first.text_info or None)
                if first.grounding_option:
                    inputs["grounding"] = gr.Checkbox(value=True, label="Ground the output (<grounding>)")
                go = gr.Button(first.button, variant="primary", elem_id=f"{tab}-run")
            with gr.Column():
                out = _outputs(tab)
        rows = []
        for task in tasks:
            for example in task.examples:
                row = {"image": _example_image(example, boxed), "choice": task.choice, "text": example.text,
                       "grounding": example.grounding}
                rows.append([row[name] for name in inputs])
        if rows:
            gr.Examples(rows, list(inputs.values()))

    @on_gpu
    def handle(**values: Any) -> Iterator[tuple]:
        task = by_choice[values.pop("choice")] if len(tasks) > 1 else first.name
        image = values.pop("image")
        image, boxes, turns = _annotator_value(image) if boxed else (image, [], 0)
        text, grounding_on = values.pop("text", None), values.pop("grounding", True)
        yield from runner.ui(task, image, text, boxes, grounding_on, values, turns)

    go.click(handle, inputs_kwargs={**inputs, **settings}, outputs=out, api_visibility="private", **events)


def _api_endpoints(runner: Runner, events: dict) -> None:
    """One named endpoint per task for ``gradio_client``: (image, text, boxes, grounding, settings...) ->
    (caption, entities, annotated PNG). Boxes are pixel boxes as "x1,y1,x2,y2; ..." or a JSON list."""
    with gr.Column(visible=False):
        inputs = {
            "image": gr.File(type="binary", label="image"),  # reaches load_image undecoded, no temp file
            "text": gr.Textbox(value="", label="text"),
            "boxes": gr.JSON(value=[], label="boxes"),
            "grounding": gr.Checkbox(value=True, label="grounding"),
        }
        for name, s in SETTINGS.items():
            inputs[name] = (gr.Textbox if s.choices else gr.Number)(value=s.default, label=name)
        outputs = [gr.Textbox(label="caption"), gr.JSON(label="entities"), gr.Image(type="filepath", label="annotated")]
        trigger = gr.Button()
    for task in runner.tasks.values():
        trigger.click(on_gpu(_api_fn(runner, task.name)), inputs_kwargs=inputs, outputs=outputs, api_name=task.name,
                      api_description=f"{task.title}: {task.description}", **events)


def _api_fn(runner: Runner, task: str) -> Callable:
    """The endpoint function of ``task``: its keyword arguments are the API's parameters."""

    def fn(**values: Any) -> tuple[str, list, str]:
        image, text, boxes, grounding_on = (values.pop(k) for k in ("image", "text", "boxes", "grounding"))
        return runner.api(task, image, text, boxes, grounding_on, values)

    return fn


def build_demo(holder: ModelHolder | None = None, tasks: Mapping[str, Task] = TASKS) -> gr.Blocks:
    """The demo's Blocks: a tab per group of ``tasks`` (by their ``tab``) and an API endpoint per task.
    Nothing is loaded here: the model loads on first use."""
    runner = Runner(holder or ModelHolder(), tasks)
    events = dict(concurrency_limit=CONCURRENCY_LIMIT, concurrency_id="kosmos2")
    cache = (OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)
    with gr.Blocks(title="KOSMOS-2: grounded multimodal demo", delete_cache=cache) as demo:
        gr.Markdown("# KOSMOS-2: grounding language in images\nCaptions, phrase grounding, region descriptions "
                    "and questions with boxes, by Microsoft's KOSMOS-2. Hover a phrase or a box to see its partner.")
        banner = gr.HTML(visible=False)
        settings = _settings_panel()
        tabs: dict[str, list[Task]] = {}
        for task in tasks.values():
            tabs.setdefault(task.tab, []).append(task)
        for group in tabs.values():
            _tab(runner, group, settings, events)
        _api_endpoints(runner, events)
        demo.load(runner.banner, None, banner, api_visibility="private")
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


def main(argv: list[str] | None = None) -> None:
    """``python app.py [--tiny] [--checkpoint ...] [--share]``: serve the demo (local only unless ``--share``)."""
    parser = argparse.ArgumentParser(description="KOSMOS-2 Gradio demo")
    parser.add_argument("--tiny", action="store_true", help="use the built-in tiny random checkpoint")
    parser.add_argument("--checkpoint", help="checkpoint folder or hub id (default: $KOSMOS2_CHECKPOINT)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    served = demo
    if args.tiny or args.checkpoint:
        served = build_demo(ModelHolder(args.checkpoint, force_tiny=args.tiny))
    served.launch(share=args.share, max_file_size=MAX_UPLOAD_BYTES)


demo = build_demo()

if __name__ == "__main__":
    main()
