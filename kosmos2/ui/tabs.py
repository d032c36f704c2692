"""The page: a tab per group of tasks (inputs, settings, button, outputs, examples), built from the task table
and the settings spec, and the detect tab's re-filtering without the model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from gradio_image_annotation import image_annotator

from ..demo import draw, view
from ..demo.detect import Detection
from ..demo.inputs import MAX_TEXT_CHARS
from ..demo.settings import DETECTION_SETTINGS, SETTINGS, Setting
from ..demo.tasks import Example, Task
from .hosting import on_gpu
from .runner import Runner, Submission

ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the example images, beside app.py
SETTINGS_PER_ROW = 3
FILTERS = ("threshold", "max_instances", "nms_iou")  # detect settings that re-filter the last result at once
BOX_HELP = (
    "To draw a box: click ⬚ *Create box* under the image (or press C), then drag on the image. "
    "Select a box and press Delete to remove it."
)
# The uploaded file as it is (no conversion or re-encoding by Gradio): the demo's load_image checks and decodes it.
IMAGE_INPUT: dict[str, Any] = dict(type="filepath", image_mode=None, height=360)
# On a narrow screen the result is under the inputs: bring it into view when the run starts (Gradio 6.31's own
# scroll_to_output does not scroll: its status trackers are never told to)
SCROLL_TO_RESULT = """() => {
  const top = document.querySelector('RESULT')?.getBoundingClientRect().top;
  if (top !== undefined && (top < 0 || top > window.innerHeight * 0.6))
    window.scrollBy({top: top - 16, behavior: 'smooth'});
}"""


def _setting_input(s: Setting) -> gr.Radio | gr.Slider:
    """The UI control of one setting."""
    if s.choices:
        return gr.Radio(list(s.choices), value=s.default, label=s.label, info=s.help)
    return gr.Slider(s.minimum, s.maximum, value=s.default, step=s.step, label=s.label, info=s.help)


def _settings_panel(
    spec: Mapping[str, Setting], title: str, shown: Sequence[str] = ()
) -> dict[str, gr.Radio | gr.Slider]:
    """Controls for the settings of ``spec``: those named in ``shown`` in the open, the others in a
    collapsed accordion ``title``."""
    controls = {name: _setting_input(spec[name]) for name in shown}
    names = [name for name in spec if name not in shown]
    with gr.Accordion(title, open=False):
        for start in range(0, len(names), SETTINGS_PER_ROW):
            with gr.Row():
                for name in names[start : start + SETTINGS_PER_ROW]:
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
    boxed = image_annotator(
        label=task.image_label,
        image_type="filepath",
        sources=["upload"],
        disable_edit_boxes=True,
        height=360,
        elem_id=f"{tab}-image",
    )
    gr.Markdown(BOX_HELP)
    return boxed


def _example_image(example: Example, boxed: bool) -> Any:
    path = str(ASSETS / example.image)
    if not boxed:
        return path
    colours = draw.entity_colours(len(example.boxes))
    boxes = [
        {"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2, "label": "", "color": draw.hex_to_rgb(colour)}
        for (x1, y1, x2, y2), colour in zip(example.boxes, colours)
    ]
    return {"image": path, "boxes": boxes[::-1]}  # newest first, as the annotator keeps them


def _annotator_value(value: dict | None) -> tuple[Any, list, int]:
    """(image, boxes in the order drawn, clockwise quarter turns) from an ``image_annotator`` value, which
    lists its boxes newest first (a new box goes to the front)."""
    if not value:
        return None, [], 0
    return value.get("image"), (value.get("boxes") or [])[::-1], int(value.get("orientation") or 0)


def tab(runner: Runner, tasks: list[Task], events: dict, cache_examples: bool = False) -> None:
    """One tab for ``tasks`` (several share a tab through a radio of their ``choice`` labels), with the
    settings its tasks take. With ``cache_examples`` each example's result is computed once, on its first
    click (default settings)."""
    first = tasks[0]
    for other in tasks[1:]:  # one set of inputs serves the whole tab
        if (other.text, other.boxes != "none", other.grounding_option) != (
            first.text,
            first.boxes != "none",
            first.grounding_option,
        ):
            raise ValueError(f"tasks {first.name!r} and {other.name!r} share the tab {first.tab!r} but not its inputs")
    tab, boxed = first.name, first.boxes != "none"
    by_choice = {t.choice: t.name for t in tasks}

    def run_tab(values: dict[str, Any]) -> Iterator[tuple]:
        task = by_choice[values.pop("choice")] if len(tasks) > 1 else first.name
        image = values.pop("image")
        image, boxes, turns = _annotator_value(image) if boxed else (image, [], 0)
        text, grounding_on = values.pop("text", None), values.pop("grounding", True)
        try:
            for *shown, result in runner.ui(Submission(task, image, text, boxes, grounding_on, values, turns)):
                if first.mode.refilters:  # the candidates, kept for the filters and the heat map
                    phrases = list(result.detection.phrases)
                    yield (*shown, result.detection, gr.update(choices=phrases, value=phrases[0] if phrases else None))
                else:
                    yield tuple(shown)
        except gr.Error as e:  # the message where the result goes; the last result's outputs are cleared
            cleared = (view.notice(e.message, error=True), "", "", None, None)
            yield cleared + ((None, gr.update(choices=[], value=None)) if first.mode.refilters else ())

    with gr.Tab(first.tab, id=tab):
        with gr.Row():
            with gr.Column():
                inputs = {"image": _image_input(tab, first)}
                if len(tasks) > 1:
                    inputs["choice"] = gr.Radio(list(by_choice), value=first.choice, label=first.tab)
                if first.text is not None:
                    inputs["text"] = gr.Textbox(
                        label=first.text,
                        lines=first.text_lines,
                        max_length=MAX_TEXT_CHARS,
                        info=first.text_info or None,
                    )
                if first.grounding_option:
                    inputs["grounding"] = gr.Checkbox(value=True, label="Ground the output (<grounding>)")
                go = gr.Button(first.button, variant="primary", elem_id=f"{tab}-run")
                if first.mode.refilters:  # the filters in the open: they re-filter the last result at once
                    controls = _settings_panel(DETECTION_SETTINGS, "More detection settings", shown=FILTERS)
                else:
                    controls = _settings_panel(SETTINGS, "Generation settings")
            with gr.Column():
                controls_extra = _detect_extras() if first.mode.refilters else {}  # next to the image it changes
                out = _outputs(tab)
        found = gr.State() if first.mode.refilters else None
        outputs = out + ([found, controls_extra["heat_for"]] if found is not None else [])
        examples = [(task, example) for task in tasks for example in task.examples]
        # the checkbox is left out of the table when every example has it ticked (its default): no "true" column
        columns = [n for n in inputs if n != "grounding" or not all(example.grounding for _, example in examples)]
        rows = []
        for task, entry in examples:
            row = {
                "image": _example_image(entry, boxed),
                "choice": task.choice,
                "text": entry.text,
                "grounding": entry.grounding,
            }
            rows.append([row[name] for name in columns])
        if rows and cache_examples:
            defaults = {name: s.default for name, s in first.settings.spec().items()}

            @on_gpu
            def example(*values: Any) -> tuple:
                *_, last = run_tab({**dict(zip(columns, values)), **defaults})
                return last

            gr.Examples(
                rows, [inputs[n] for n in columns], outputs=outputs, fn=example, cache_examples=True, cache_mode="lazy"
            )
        elif rows:
            gr.Examples(rows, [inputs[n] for n in columns])

    @on_gpu
    def handle(**values: Any) -> Iterator[tuple]:
        yield from run_tab(values)

    go.click(handle, inputs_kwargs={**inputs, **controls}, outputs=outputs, api_visibility="private", **events)
    go.click(None, js=SCROLL_TO_RESULT.replace("RESULT", f"#{tab}-result"))  # in the browser only
    if found is not None:  # first.mode.refilters
        _refilter_events(runner, found, controls, controls_extra, out)


def _detect_extras() -> dict[str, gr.Checkbox | gr.Dropdown]:
    """The detect tab's heat-map controls."""
    show = gr.Checkbox(value=False, label="Show where the model looks", elem_id="detect-heat")
    heat_for = gr.Dropdown(choices=[], label="for the phrase", elem_id="detect-heat-phrase")
    return {"show": show, "heat_for": heat_for}


def _refilter_events(
    runner: Runner,
    found: gr.State,
    controls: dict[str, gr.Radio | gr.Slider],
    extras: dict[str, gr.Checkbox | gr.Dropdown],
    out: list[gr.components.Component],
) -> None:
    """The filter sliders and the heat-map controls redraw the last detect result without the model."""

    def redraw(found: Detection | None, show: bool, heat_for: str | None, **values: Any) -> tuple:
        return runner.refilter(found, heat_for if show else None, values)

    inputs: dict[str, gr.blocks.Block] = {
        "found": found,
        "show": extras["show"],
        "heat_for": extras["heat_for"],
        **controls,
    }
    for name in FILTERS:
        controls[name].input(
            redraw, inputs_kwargs=inputs, outputs=out, api_visibility="private", trigger_mode="always_last", queue=False
        )
    for name in ("show", "heat_for"):  # (input: the user's changes, not the run's own update of the phrases)
        extras[name].input(redraw, inputs_kwargs=inputs, outputs=out, api_visibility="private", queue=False)
