"""KOSMOS-2 Gradio demo: UI wiring only, built from the task table and the settings spec.

Tasks, prompts and their examples are ``kosmos2.demo.tasks.TASKS``; generation settings are
``kosmos2.demo.settings.SETTINGS``; validation, loading and the runner live in ``kosmos2.demo``.
The model loads once per process: on the first page load or request, or at start-up with ``--preload``
(and on Spaces), the page showing a status line meanwhile. ``python app.py --tiny`` runs on the built-in
tiny random checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import inspect
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# Hugging Face Spaces ZeroGPU: a GPU is attached only inside @spaces.GPU functions, each call of which
# runs in a process forked for it; `spaces` must be imported before torch (which kosmos2.demo imports).
try:
    import spaces
except ImportError:
    spaces = None
ZERO_GPU = spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU"))


def gpu_seconds(*_: Any, **values: Any) -> int:
    """The GPU time to ask ZeroGPU for one call, from its settings (the decorated function's arguments;
    a cached example's come by position and get the default)."""
    try:
        tokens = int(float(values.get("max_new_tokens", 128)))
        beams = int(float(values.get("num_beams", 1))) if values.get("decoding") == "beam" else 1
    except (TypeError, ValueError):  # a bad value: the call refuses it at once, so a short task suffices
        return 15
    return 15 + round(max(tokens, 1) * max(beams, 1) * 0.05)


def on_gpu(fn: Callable) -> Callable:
    """``fn`` as a ZeroGPU task (``spaces.GPU`` with a duration from its settings); elsewhere ``fn``."""
    return spaces.GPU(fn, duration=gpu_seconds) if ZERO_GPU else fn


import gradio as gr
from gradio.utils import get_upload_folder
from gradio_client import handle_file
from gradio_image_annotation import image_annotator

from kosmos2.demo import draw, view
from kosmos2.demo.inputs import MAX_TEXT_CHARS, InputError
from kosmos2.demo.loading import MAX_BATCH_SIZE, TINY_CHECKPOINT, ModelHolder, SettingError
from kosmos2.demo.process import (MCP_NOTE, StopRequested, drop_stray_gradio_prints, fix_mcp_tool_outputs,
                                  stop_on_signals)
from kosmos2.demo.detect import Detection
from kosmos2.demo.execute import execute, task_settings
from kosmos2.demo.results import TaskResult
from kosmos2.demo.settings import DETECTION_SETTINGS, SETTINGS, DetectionSettings, Setting
from kosmos2.demo.tasks import TASKS, Example, Task, build_request, find_task
from kosmos2.hub import CheckpointError

log = logging.getLogger("kosmos2.app")
fix_mcp_tool_outputs()  # before any MCP server starts: python app.py --mcp, or GRADIO_MCP_SERVER on Spaces
ASSETS = Path(__file__).resolve().parent / "assets"
QUEUE_MAX_SIZE = 32
ON_SPACES = bool(os.environ.get("SPACE_ID"))  # Hugging Face Spaces sets it
CONCURRENCY_LIMIT = MAX_BATCH_SIZE  # waiting requests share batches (kosmos2.serving)
OUTPUT_MAX_AGE_S = 3600
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
SESSIONS_KEPT = 1000  # Gradio keeps each browser or API session's state (~0.5 MB here); its default is 10000
OUTPUT_MAX_FILES = 64  # annotated PNGs kept in the private output folder (Gradio serves its own copy)
STREAM_INTERVAL_S = 0.15  # at most ~7 partial updates a second
API_POLL_S = 0.25  # how often an API call lets Gradio check whether its client is still there
STATUS_POLL_S = 0.5  # how often the page's status line is refreshed while the model loads
SETTINGS_PER_ROW = 3
FILTERS = ("threshold", "max_instances", "nms_iou")  # detect settings that re-filter the last result at once
TINY_BANNER = ("⚠️ Running on the built-in <b>tiny checkpoint with random weights</b>: outputs are random. "
               "Set <code>KOSMOS2_CHECKPOINT</code> / go online to get the real model.")
TINY_MCP_NOTE = ("Note: this server runs the built-in tiny checkpoint with random weights, so the answer above is "
                 "random, not KOSMOS-2's.")
INT8_BANNER = ("🧪 <b>Experimental int8 mode</b> (<code>KOSMOS2_QUANTIZE=int8</code>): faster on CPU, but its "
               "quality has not been verified against the full-precision model.")
BOX_HELP = ("To draw a box: click ⬚ *Create box* under the image (or press C), then drag on the image. "
            "Select a box and press Delete to remove it.")
# The uploaded file as it is (no conversion or re-encoding by Gradio): the demo's load_image checks and decodes it.
IMAGE_INPUT = dict(type="filepath", image_mode=None, height=360)
USER_ERROR = "Generation failed because of an internal error; please try again."
# Gradio hides "Use via API" in the footer of narrow screens and puts the example tables' text on one line;
# the page's own CSS shows the one and keeps the lines of the other
PAGE_CSS = ("@media (width <= 640px) { footer .show-api, footer .show-api-divider { display: flex !important; } }"
            ' td[data-testid^="dataset-cell"] div { white-space: pre-line !important; }')
# On a narrow screen the result is under the inputs: bring it into view when the run starts (Gradio 6.31's own
# scroll_to_output does not scroll: its status trackers are never told to)
SCROLL_TO_RESULT = """() => {
  const top = document.querySelector('RESULT')?.getBoundingClientRect().top;
  if (top !== undefined && (top < 0 || top > window.innerHeight * 0.6)) window.scrollBy({top: top - 16, behavior: 'smooth'});
}"""
HEADER = ("<h1>KOSMOS-2: grounding language in images</h1><p>Captions, phrase grounding, region descriptions and "
          "questions with boxes, by Microsoft's KOSMOS-2. Hover or tap a phrase or a box to see its partner.</p>"
          f"<style>{PAGE_CSS}</style>")


class Runner:
    """Runs tasks for the UI and the API on one lazily loaded model."""

    def __init__(self, holder: ModelHolder, tasks: Mapping[str, Task] = TASKS) -> None:
        self.holder = holder
        self.tasks = tasks
        # Gradio copies each result into its cache; for generator endpoints it never deletes the copy
        self.outputs = draw.OutputFolder(OUTPUT_MAX_FILES, OUTPUT_MAX_AGE_S, copies=get_upload_folder())

    async def notices(self) -> AsyncIterator[dict]:
        """The page's status line while the model loads (starting it if nobody has: the page load is a
        first use), refreshed every ``STATUS_POLL_S``; then the banner, if the tiny checkpoint or the
        experimental int8 mode is in use. After a failure it keeps watching: the next request tries again.
        Async: a page waiting for the model holds no thread (Gradio stops it when the page goes away)."""
        self.holder.start()
        shown = None
        while (status := self.holder.status).stage != "ready":
            icon = "⚠️" if status.stage == "failed" else "⏳"
            line = _notice_line("k2-loading", f"{icon} {html.escape(status.describe())}")
            if line != shown:
                yield gr.update(visible=True, value=line)
                shown = line
            await asyncio.sleep(STATUS_POLL_S)
        yield self.banner()

    def banner(self) -> dict:
        """Loads the model (first call) and shows the banner when the tiny checkpoint or the
        experimental int8 mode is in use."""
        loaded = self.holder.get()
        notes = [TINY_BANNER] * loaded.is_tiny + [INT8_BANNER] * (loaded.quantize == "int8")
        if not notes:
            return gr.update(visible=False)
        return gr.update(visible=True, value="".join(_notice_line("k2-banner", n, alert=True) for n in notes))

    def mcp_note(self) -> str | None:
        """The line each MCP tool answer ends with: on the tiny checkpoint, that it is random (an MCP client
        sees no banner)."""
        return TINY_MCP_NOTE if self.holder.get().is_tiny else None

    def stream(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
               settings: Mapping[str, Any], quarter_turns: int = 0,
               min_interval_s: float | None = None) -> Iterator[tuple[Any, TaskResult]]:
        """Validated run yielding (RGB image, result), partial results at most every ``min_interval_s``
        (default ``STREAM_INTERVAL_S``); ``settings`` by name, the task's group. User errors become
        ``gr.Error`` with their message only, other errors a generic one (details go to the server log)."""
        try:
            spec = find_task(task, self.tasks)
            request = build_request(spec, image, text, boxes, grounding_on, quarter_turns)
            chosen = task_settings(spec, settings)
            loaded = self.holder.get()
            interval = STREAM_INTERVAL_S if min_interval_s is None else min_interval_s
            for result in execute(loaded, spec, request, chosen, min_interval_s=interval):
                yield request.image, result
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception:
            log.exception("task %s failed", task)
            raise gr.Error(USER_ERROR, print_exception=False) from None

    def ui(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
           settings: Mapping[str, Any], quarter_turns: int = 0) -> Iterator[tuple]:
        """UI outputs: linked HTML, timing, raw text, entities JSON, annotated PNG (final step only), and
        the result."""
        uri = None
        for shown, result in self.stream(task, image, text, boxes, grounding_on, settings, quarter_turns):
            uri = uri or view.image_data_uri(shown)
            png = self.outputs.save(draw.annotate(shown, result.annotations())) if result.done else gr.update()
            yield *_tab_outputs(uri, result, png), result

    def refilter(self, found: Detection | None, heat_for: str | None, settings: Mapping[str, Any]) -> tuple:
        """A detect result's UI outputs again under new filter ``settings`` (no model call), with the
        heat map of where the model looks for the phrase ``heat_for`` (None: none)."""
        if found is None:
            return (gr.update(),) * 5
        try:
            result = found.result(DetectionSettings.from_user(**settings), refiltered=True)
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        shown = found.request.image
        if heat_for in found.phrases:
            shown = draw.heat_overlay(shown, found.density(found.phrases.index(heat_for)))
        png = self.outputs.save(draw.annotate(shown, result.annotations()))
        return _tab_outputs(view.image_data_uri(shown), result, png)

    def api(self, task: str, image: Any, text: str | None, boxes: Any, grounding_on: bool,
            settings: Mapping[str, Any]) -> Iterator[tuple]:
        """API outputs: caption, entities, path of the annotated PNG, once at the end. Until then it yields
        "no change" every ``API_POLL_S`` seconds, so that Gradio can stop it when the client cancels or goes
        away: closing this generator drops the request's rows from their batch at the next step. The first
        "no change" comes before any work: Gradio can close a generator only once it has yielded."""
        yield gr.skip(), gr.skip(), gr.skip()
        for shown, result in self.stream(task, image, text, boxes, grounding_on, settings, min_interval_s=API_POLL_S):
            if result.done:
                yield result.caption, result.entities_json(), self.outputs.save(draw.annotate(shown, result.annotations()))
            else:
                yield gr.skip(), gr.skip(), gr.skip()


def _notice_line(kind: str, inner_html: str, alert: bool = False) -> str:
    """A one-line notice above the tabs, styled as an alert for ``alert`` (the banners), all of one height."""
    colours = "background:#fff4e5;border:1px solid #f0a202" if alert else "background:#f4f6f8;border:1px solid #d0d7de"
    return (f'<div class="{kind}" role="{"alert" if alert else "status"}" style="{colours};border-radius:8px;'
            f'padding:.5em 1em;margin:0;line-height:1.5">{inner_html}</div>')


def _tab_outputs(image_uri: str, result: TaskResult, png: Any) -> tuple:
    """A result as the tab's outputs (see :func:`_outputs`): linked HTML, timing, raw text, entities JSON,
    annotated PNG."""
    return view.render(image_uri, result), result.timing_text(), result.raw, result.entities_json(), png


# --------------------------------------------------------------------------- components


def _setting_input(s: Setting) -> gr.components.Component:
    """The UI control of one setting."""
    if s.choices:
        return gr.Radio(list(s.choices), value=s.default, label=s.label, info=s.help)
    return gr.Slider(s.minimum, s.maximum, value=s.default, step=s.step, label=s.label, info=s.help)


def _settings_panel(spec: Mapping[str, Setting], title: str, shown: Sequence[str] = ()) -> dict[str, gr.components.Component]:
    """Controls for the settings of ``spec``: those named in ``shown`` in the open, the others in a
    collapsed accordion ``title``."""
    controls: dict[str, gr.components.Component] = {name: _setting_input(spec[name]) for name in shown}
    names = [name for name in spec if name not in shown]
    with gr.Accordion(title, open=False):
        for start in range(0, len(names), SETTINGS_PER_ROW):
            with gr.Row():
                for name in names[start:start + SETTINGS_PER_ROW]:
                    controls[name] = _setting_input(spec[name])
    return controls


def _outputs(tab: str) -> list[gr.components.Component]:
    page = gr.HTML(value=view.notice(view.EMPTY_RESULT), label="Result", elem_id=f"{tab}-result")
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
    boxes = [{"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2, "label": "", "color": draw.hex_to_rgb(colour)}
             for (x1, y1, x2, y2), colour in zip(example.boxes, colours)]
    return {"image": path, "boxes": boxes[::-1]}  # newest first, as the annotator keeps them


def _annotator_value(value: dict | None) -> tuple[Any, list, int]:
    """(image, boxes in the order drawn, clockwise quarter turns) from an ``image_annotator`` value, which
    lists its boxes newest first (a new box goes to the front)."""
    if not value:
        return None, [], 0
    return value.get("image"), (value.get("boxes") or [])[::-1], int(value.get("orientation") or 0)


# --------------------------------------------------------------------------- tabs and endpoints


def _tab(runner: Runner, tasks: list[Task], events: dict, cache_examples: bool = False) -> None:
    """One tab for ``tasks`` (several share a tab through a radio of their ``choice`` labels), with the
    settings its tasks take. With ``cache_examples`` each example's result is computed once, on its first
    click (default settings)."""
    first = tasks[0]
    for other in tasks[1:]:  # one set of inputs serves the whole tab
        if (other.text, other.boxes != "none", other.grounding_option) != (first.text, first.boxes != "none",
                                                                          first.grounding_option):
            raise ValueError(f"tasks {first.name!r} and {other.name!r} share the tab {first.tab!r} but not its inputs")
    tab, boxed = first.name, first.boxes != "none"
    by_choice = {t.choice: t.name for t in tasks}

    def run_tab(values: dict[str, Any]) -> Iterator[tuple]:
        task = by_choice[values.pop("choice")] if len(tasks) > 1 else first.name
        image = values.pop("image")
        image, boxes, turns = _annotator_value(image) if boxed else (image, [], 0)
        text, grounding_on = values.pop("text", None), values.pop("grounding", True)
        try:
            for *shown, result in runner.ui(task, image, text, boxes, grounding_on, values, turns):
                if first.detect:  # the candidates, kept for the filters and the heat map
                    phrases = list(result.detection.phrases)
                    yield (*shown, result.detection, gr.update(choices=phrases, value=phrases[0] if phrases else None))
                else:
                    yield tuple(shown)
        except gr.Error as e:  # the message where the result goes; the last result's outputs are cleared
            cleared = (view.notice(e.message, error=True), "", "", None, None)
            yield cleared + ((None, gr.update(choices=[], value=None)) if first.detect else ())

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
                if first.detect:  # the filters in the open: they re-filter the last result at once
                    controls = _settings_panel(DETECTION_SETTINGS, "More detection settings", shown=FILTERS)
                else:
                    controls = _settings_panel(SETTINGS, "Generation settings")
            with gr.Column():
                controls_extra = _detect_extras() if first.detect else {}  # next to the image it changes
                out = _outputs(tab)
        found = gr.State() if first.detect else None
        outputs = out + ([found, controls_extra["heat_for"]] if first.detect else [])
        examples = [(task, example) for task in tasks for example in task.examples]
        # the checkbox is left out of the table when every example has it ticked (its default): no "true" column
        columns = [n for n in inputs if n != "grounding" or not all(example.grounding for _, example in examples)]
        rows = []
        for task, example in examples:
            row = {"image": _example_image(example, boxed), "choice": task.choice, "text": example.text,
                   "grounding": example.grounding}
            rows.append([row[name] for name in columns])
        if rows and cache_examples:
            defaults = {name: s.default for name, s in first.settings.spec().items()}

            @on_gpu
            def example(*values: Any) -> tuple:
                *_, last = run_tab({**dict(zip(columns, values)), **defaults})
                return last

            gr.Examples(rows, [inputs[n] for n in columns], outputs=outputs, fn=example, cache_examples=True,
                        cache_mode="lazy")
        elif rows:
            gr.Examples(rows, [inputs[n] for n in columns])

    @on_gpu
    def handle(**values: Any) -> Iterator[tuple]:
        yield from run_tab(values)

    go.click(handle, inputs_kwargs={**inputs, **controls}, outputs=outputs, api_visibility="private", **events)
    go.click(None, js=SCROLL_TO_RESULT.replace("RESULT", f"#{tab}-result"))  # in the browser only
    if first.detect:
        _refilter_events(runner, found, controls, controls_extra, out)


def _detect_extras() -> dict[str, gr.components.Component]:
    """The detect tab's heat-map controls."""
    show = gr.Checkbox(value=False, label="Show where the model looks", elem_id="detect-heat")
    heat_for = gr.Dropdown(choices=[], label="for the phrase", elem_id="detect-heat-phrase")
    return {"show": show, "heat_for": heat_for}


def _refilter_events(runner: Runner, found: gr.State, controls: dict[str, gr.components.Component],
                     extras: dict[str, gr.components.Component], out: list[gr.components.Component]) -> None:
    """The filter sliders and the heat-map controls redraw the last detect result without the model."""
    def redraw(found: Detection | None, show: bool, heat_for: str | None, **values: Any) -> tuple:
        return runner.refilter(found, heat_for if show else None, values)

    inputs = {"found": found, "show": extras["show"], "heat_for": extras["heat_for"], **controls}
    for name in FILTERS:
        controls[name].input(redraw, inputs_kwargs=inputs, outputs=out, api_visibility="private",
                             trigger_mode="always_last", queue=False)
    for name in ("show", "heat_for"):  # (input: the user's changes, not the run's own update of the phrases)
        extras[name].input(redraw, inputs_kwargs=inputs, outputs=out, api_visibility="private", queue=False)


def _with_example(component: gr.components.Component, example: Any) -> gr.components.Component:
    """``component`` with ``example`` as its value in the "Use via API" page's example call."""
    component.example_payload = component.example_value = lambda: example  # type: ignore[method-assign]  # Gradio's hooks
    return component


def _described(component: gr.components.Component, doc: str, schema: dict | None = None) -> gr.components.Component:
    """``component`` as an API parameter described by ``doc`` on the "Use via API" page (and with the JSON
    ``schema``, if given, instead of its component's)."""
    info = schema or component.api_info()
    component.api_info = lambda: {**info, "additional_description": doc}  # type: ignore[method-assign]  # Gradio's hook
    return component


def example_image(image: str) -> str:
    """The example ``image`` of ``assets/`` as the API page shows it: on Spaces the Space's own file, a URL
    that any client can give (the server fetches it: huggingface.co passes Gradio's SSRF check); elsewhere
    its path, which a client on this machine uploads (the server would refuse its own URL, a local address)."""
    if ON_SPACES:
        return f"https://huggingface.co/spaces/{os.environ['SPACE_ID']}/resolve/main/assets/{image}"
    return str(ASSETS / image)


def _api_setting(s: Setting) -> tuple[gr.components.Component, str]:
    """A setting as an API parameter of its own type (a choice, an integer or a number), its default as the
    example, and its description; the range is checked by the setting itself, so that errors name it."""
    doc = f"{s.label}: {s.describe()}"
    if s.choices:  # one of its choices, checked by the setting (its message names it)
        choice = _with_example(gr.Textbox(value=s.default, label=s.label), s.default)
        return _described(choice, doc, {"type": "string", "enum": list(s.choices)}), doc
    number = _with_example(gr.Number(value=s.default, label=s.label), s.default)
    # typed an integer, but not rounded by Gradio (precision=0 would): 2.5 is refused by name
    return _described(number, doc, {"type": "integer"} if s.kind is int else None), doc


def _api_parameters(task: Task) -> dict[str, tuple[gr.components.Component, str]]:
    """The endpoint parameters of ``task``, each with its one-line description (the MCP tool's and the API
    page's): the image (a file or URL, read by the demo's loader undecoded), its text (named after its label),
    boxes and grounding if it takes them, then its settings. The API page's examples are the task's first,
    with an image a client can give (:func:`example_image`)."""
    example = task.examples[0] if task.examples else Example("cat.jpg")

    def parameter(component: gr.components.Component, doc: str, schema: dict | None = None) -> tuple:
        return _described(component, doc, schema), doc

    image = _with_example(gr.File(type="binary", label=task.image_label),
                          handle_file(example_image(example.image)))
    parameters = {"image": parameter(image, "the image: a file or URL")}
    if task.text is not None:  # required: no default, so that the API page shows the example, not ""
        text = _with_example(gr.Textbox(value=None, label=task.text), example.text)
        parameters[task.text.lower()] = parameter(text, (task.text_info or task.text).rstrip("."))
    if task.boxes != "none":
        boxes = _with_example(gr.JSON(value=None if task.boxes == "required" else [], label="Boxes"),
                              [list(b) for b in example.boxes])
        box = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
        parameters["boxes"] = parameter(boxes, f"pixel boxes [[x1, y1, x2, y2], ...] ({task.boxes})",
                                        {"type": "array", "items": box})
    if task.grounding_option:
        parameters["grounding"] = parameter(gr.Checkbox(value=True, label="Ground the output"),
                                            "start with the <grounding> tag, so that the output links phrases to boxes")
    parameters.update({name: _api_setting(s) for name, s in task.settings.spec().items()})
    return parameters


def _api_endpoints(runner: Runner, events: dict) -> None:
    """One named endpoint per task for ``gradio_client`` and MCP clients, with exactly that task's
    parameters (see :func:`_api_parameters`) -> (caption, entities, annotated PNG)."""
    for task in runner.tasks.values():
        with gr.Column(visible=False):
            parameters = _api_parameters(task)
            outputs = [gr.Textbox(label="caption"), gr.JSON(label="entities"),
                       gr.Image(type="filepath", label="annotated")]
            trigger = gr.Button()
        docs = {name: doc for name, (_, doc) in parameters.items()}
        trigger.click(on_gpu(_api_fn(runner, task, docs)), inputs_kwargs={n: c for n, (c, _) in parameters.items()},
                      outputs=outputs, api_name=task.name, api_description=f"{task.title}: {task.description}",
                      **events)


def _api_fn(runner: Runner, task: Task, docs: Mapping[str, str]) -> Callable:
    """The endpoint function of ``task``: keyword arguments named as the API's parameters (``docs``: name ->
    description), and a docstring from them that Gradio's MCP server turns into the tool's documentation."""
    text_name = task.text.lower() if task.text is not None else None

    def fn(**values: Any) -> Iterator[tuple]:
        text = values.pop(text_name) if text_name else None
        image, boxes, grounding_on = values.pop("image"), values.pop("boxes", []), values.pop("grounding", True)
        yield from runner.api(task.name, image, text, boxes, grounding_on, values)

    fn.__name__ = task.name
    fn.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in docs])
    fn.__doc__ = (f"{task.title}: {task.description}\n\nArgs:\n" + "".join(f"    {n}: {d}\n" for n, d in docs.items())
                  + "\nReturns:\n    the caption, the entities (phrase, span, boxes, scores) and the annotated image")
    return fn


def build_demo(holder: ModelHolder | None = None, tasks: Mapping[str, Task] = TASKS,
               cache_examples: bool = False, load_now: bool = ZERO_GPU, preload: bool = False) -> gr.Blocks:
    """The demo's Blocks: a tab per group of ``tasks`` (by their ``tab``) and an API endpoint per task;
    ``cache_examples``: each example's result is computed once, lazily (see :func:`_tab`). The model
    loads here if ``load_now`` (on ZeroGPU: it must be in the main process, and on the GPU, before the
    forked calls), starts loading in the background if ``preload``, else loads on first use."""
    runner = Runner(holder or ModelHolder(), tasks)
    if load_now:
        runner.holder.get()
    elif preload:
        runner.holder.start()
    events = dict(concurrency_limit=CONCURRENCY_LIMIT, concurrency_id="kosmos2")
    cache = (OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)
    with gr.Blocks(title="KOSMOS-2: grounded multimodal demo", delete_cache=cache) as demo:
        gr.HTML(HEADER)
        # shown from the start (the page's first status line comes with its first update): its space is
        # kept, so the page does not move when the status line or the banner arrives
        banner = gr.HTML(value=_notice_line("k2-loading", "⏳ Connecting…"), visible=True)
        tabs: dict[str, list[Task]] = {}
        for task in tasks.values():
            tabs.setdefault(task.tab, []).append(task)
        with gr.Tabs(overflow_behavior="wrap"):  # every tab in sight on a phone, not behind a menu
            for group in tabs.values():
                _tab(runner, group, events, cache_examples)
        _api_endpoints(runner, events)
        demo.load(runner.notices, None, banner, api_visibility="private", concurrency_limit=None)
    setattr(demo, MCP_NOTE, runner.mcp_note)
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


def main(argv: list[str] | None = None) -> int:
    """``python app.py [--tiny] [--checkpoint ...] [--host H] [--port P] [--share] [--mcp]``: serve the demo
    (local only unless ``--share``) until Ctrl-C or SIGTERM; returns the exit status. ``--port`` is that
    port or an error (without it, Gradio's: ``$GRADIO_SERVER_PORT`` or 7860, else the next free one); with
    ``--mcp`` the MCP server's URL is printed once it listens.

    A bad ``KOSMOS2_*`` setting, or a checkpoint named by ``--checkpoint`` or ``$KOSMOS2_CHECKPOINT`` that
    cannot be loaded, stops it before serving: one ``error:`` line, status 2. So a named checkpoint loads
    before the server starts; the default one loads on first use, or from start-up in the background with
    ``--preload`` and on Spaces (and falls back to the tiny one offline)."""
    parser = argparse.ArgumentParser(description="KOSMOS-2 Gradio demo")
    parser.add_argument("--tiny", action="store_true", help="use the built-in tiny random checkpoint")
    parser.add_argument("--checkpoint", help="checkpoint folder or hub id (default: $KOSMOS2_CHECKPOINT)")
    parser.add_argument("--host", help="the address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; "
                                       "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, help="the port (default: $GRADIO_SERVER_PORT or 7860, or the next free "
                                                 "one); a given port that is taken is an error")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve the tasks as MCP tools at /gradio_api/mcp/ (needs gradio[mcp])")
    parser.add_argument("--cache-examples", action="store_true",
                        help="compute each example's result once, on first click (default on Spaces)")
    parser.add_argument("--preload", action="store_true",
                        help="load the model at start-up, not on first use (default on Spaces)")
    args = parser.parse_args(argv)
    try:
        holder = ModelHolder(args.checkpoint, force_tiny=args.tiny)
        if holder.explicit and holder.checkpoint != TINY_CHECKPOINT:
            holder.get()
    except (SettingError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    served = build_demo(holder, cache_examples=args.cache_examples or ON_SPACES, preload=args.preload or ON_SPACES)
    drop_stray_gradio_prints()
    try:
        with stop_on_signals():
            try:
                served.launch(share=args.share, max_file_size=MAX_UPLOAD_BYTES, mcp_server=args.mcp or None,
                              state_session_capacity=SESSIONS_KEPT, server_name=args.host, server_port=args.port,
                              prevent_thread_lock=True)
            except OSError as e:  # the port is taken, or the address is not this machine's
                print(f"error: cannot listen on {args.host or '127.0.0.1'}:{args.port or 'the default port'} "
                      f"({e}); choose another --port or --host", file=sys.stderr)
                return 2
            if args.mcp:
                print(f"* MCP server (streamable HTTP): {served.local_url.rstrip('/')}/gradio_api/mcp/", flush=True)
            served.block_thread()
    except StopRequested:  # SIGTERM or Ctrl-C: Gradio's full shutdown (its cache), then the atexit clean-up
        served.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:  # imported (by Spaces' or Gradio's reloader, or tests): a bad KOSMOS2_* setting raises SettingError here
    demo = build_demo(cache_examples=ON_SPACES, preload=ON_SPACES)
