"""The app's API: a named endpoint per task, with exactly that task's parameters, typed and described, and
examples that run as shown; Gradio's MCP server makes each one a tool."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gradio as gr
from gradio_client import handle_file

from ..demo.settings import Setting
from ..demo.tasks import Example, Task
from . import hosting
from .hosting import on_gpu
from .runner import Runner, Submission
from .tabs import ASSETS


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
    if hosting.ON_SPACES:
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

    image = _with_example(gr.File(type="binary", label=task.image_label), handle_file(example_image(example.image)))
    parameters = {"image": parameter(image, "the image: a file or URL")}
    if task.text is not None:  # required: no default, so that the API page shows the example, not ""
        text = _with_example(gr.Textbox(value=None, label=task.text), example.text)
        parameters[task.text.lower()] = parameter(text, (task.text_info or task.text).rstrip("."))
    if task.boxes != "none":
        boxes = _with_example(
            gr.JSON(value=None if task.boxes == "required" else [], label="Boxes"), [list(b) for b in example.boxes]
        )
        box = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
        parameters["boxes"] = parameter(
            boxes, f"pixel boxes [[x1, y1, x2, y2], ...] ({task.boxes})", {"type": "array", "items": box}
        )
    if task.grounding_option:
        parameters["grounding"] = parameter(
            gr.Checkbox(value=True, label="Ground the output"),
            "start with the <grounding> tag, so that the output links phrases to boxes",
        )
    parameters.update({name: _api_setting(s) for name, s in task.settings.spec().items()})
    return parameters


def api_endpoints(runner: Runner, events: dict) -> None:
    """One named endpoint per task for ``gradio_client`` and MCP clients, with exactly that task's
    parameters (see :func:`_api_parameters`) -> (caption, entities, annotated PNG)."""
    for task in runner.tasks.values():
        with gr.Column(visible=False):
            parameters = _api_parameters(task)
            outputs = [
                gr.Textbox(label="caption"),
                gr.JSON(label="entities"),
                gr.Image(type="filepath", label="annotated"),
            ]
            trigger = gr.Button()
        docs = {name: doc for name, (_, doc) in parameters.items()}
        trigger.click(
            on_gpu(_api_fn(runner, task, docs)),
            inputs_kwargs={n: c for n, (c, _) in parameters.items()},
            outputs=outputs,
            api_name=task.name,
            api_description=f"{task.title}: {task.description}",
            **events,
        )


def _api_fn(runner: Runner, task: Task, docs: Mapping[str, str]) -> Callable:
    """The endpoint function of ``task``: keyword arguments named as the API's parameters (``docs``: name ->
    description), and a docstring from them that Gradio's MCP server turns into the tool's documentation."""
    text_name = task.text.lower() if task.text is not None else None

    def fn(**values: Any) -> Iterator[tuple]:
        text = values.pop(text_name) if text_name else None
        image, boxes, grounding_on = values.pop("image"), values.pop("boxes", []), values.pop("grounding", True)
        yield from runner.api(Submission(task.name, image, text, boxes, grounding_on, values))

    fn.__name__ = task.name
    signature = inspect.Signature([inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in docs])
    fn.__signature__ = signature  # type: ignore[attr-defined]  # inspect.signature (so Gradio) reads it
    fn.__doc__ = (
        f"{task.title}: {task.description}\n\nArgs:\n"
        + "".join(f"    {n}: {d}\n" for n, d in docs.items())
        + "\nReturns:\n    the caption, the entities (phrase, span, boxes, scores) and the annotated image"
    )
    return fn
