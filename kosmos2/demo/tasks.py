"""The task table: one :class:`Task` record per demo task, each with its prompt builder.

The app builds every tab and API endpoint from :data:`TASKS`, and the CLI its ``--task`` choices.
Adding a task is one record and its prompt function: :func:`build_request` does the rest (the
image, the boxes, the checks every task shares).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import grounding
from ..grounding import Box
from .detect import DETECT, detect_prompt
from .generate import GENERATE
from .inputs import (
    InputError,
    clean_text,
    drawn_box_colours,
    load_image,
    normalise_box,
    parse_boxes,
    parse_phrases,
    validate_boxes,
)
from .mode import Mode
from .request import TaskRequest
from .settings import DetectionSettings, GenerationSettings


@dataclass(frozen=True)
class Prompting:
    """What a prompt builder gets: the cleaned-up inputs of one request."""

    text: str | None  # the raw text field (builders clean or parse it)
    boxes: tuple[Box, ...]  # normalised, validated
    grounding: bool  # the "ground the output" choice (tasks with ``grounding_option``)


@dataclass(frozen=True)
class Example:
    """An example in a task's tab: an image from ``assets/``, and what goes in the other inputs."""

    image: str
    text: str = ""
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # pixel boxes, drawn in the box-drawing input
    grounding: bool = True


@dataclass(frozen=True)
class Task:
    """One demo task.

    ``name`` is its CLI ``--task`` and API endpoint (``/name``), ``title`` and ``description`` say what
    it does (CLI help, API description); ``prompts`` builds one prompt per batch row; ``tab`` the title of the tab it is
    shown in (tasks with the same tab share it and a radio chooses, labelled by ``choice``);
    ``text`` the label of its text field (None: no text); ``boxes`` "none", "optional" or
    "required"; ``grounding_option`` adds a "ground the output" checkbox; ``colour_by_row`` gives
    each batch row one colour (one row per phrase or box), and ``colour_row_text`` writes each row's text
    in it too (a description of the box drawn in that colour); ``mode`` is how it runs: generating text
    (:data:`~kosmos2.demo.generate.GENERATE`) or finding every instance of each phrase with scores
    (:data:`~kosmos2.demo.detect.DETECT`), with the settings group of its mode;
    ``answer_after``: the page shows the text after it (the answer, not the prompt's scaffold around the
    question), the caption and the raw output keep the whole.
    """

    name: str
    title: str
    description: str
    prompts: Callable[[Prompting], list[str]]
    tab: str
    choice: str = ""
    button: str = "Run"
    image_label: str = "Image"
    text: str | None = None
    text_info: str = ""
    text_lines: int = 1
    boxes: str = "none"
    grounding_option: bool = False
    colour_by_row: bool = False
    colour_row_text: bool = False
    examples: tuple[Example, ...] = ()
    mode: Mode = GENERATE
    answer_after: str = ""

    @property
    def settings(self) -> type[GenerationSettings] | type[DetectionSettings]:
        """The settings group the task takes."""
        return self.mode.settings


# --------------------------------------------------------------------------- prompt pieces


def render_bracketed(text: str, boxes: Sequence[Box | None]) -> str:
    """Turn ``[words]`` in clean user text into phrases bound to ``boxes`` in order.

    The result starts with a space unless it starts with a phrase, so it can follow a tag
    (``<grounding>``) or a word directly: ``Where is [the fire] next to?`` ->
    `` Where is<phrase> the fire</phrase><object>...</object> next to?``.
    """
    parts = re.split(r"\[([^\[\]]*)\]", text)
    if (len(parts) - 1) // 2 != len(boxes):
        raise InputError(
            f"You drew {len(boxes)} box(es) but marked {(len(parts) - 1) // 2} phrase(s) with [brackets]: mark "
            "the words each box refers to, in the order the boxes were drawn, e.g. 'What is [this] doing?'."
        )
    out = []
    for k, part in enumerate(parts):
        if k % 2:
            phrase = part.strip()
            if not phrase:
                raise InputError("A [bracketed] phrase is empty: put the words the box refers to inside it.")
            box = boxes[k // 2]
            out.append(f"<phrase> {phrase}</phrase>" + (grounding.object_markup([box]) if box is not None else ""))
        else:
            seg = part.lstrip() if k == 0 else part
            if k + 1 < len(parts):
                seg = seg.rstrip()
            out.append((" " + seg) if k == 0 and seg else seg)
    return "".join(out)


# --------------------------------------------------------------------------- prompt builders


def _fixed(prompt: str) -> Callable[[Prompting], list[str]]:
    return lambda _: [prompt]


def _ground_prompts(p: Prompting) -> list[str]:
    return [f"<grounding><phrase> {phrase}</phrase>" for phrase in parse_phrases(p.text)]


def _detect_prompts(p: Prompting) -> list[str]:
    return [detect_prompt(phrase) for phrase in parse_phrases(p.text)]


def _refer_prompts(p: Prompting) -> list[str]:
    return [f"<grounding>{render_bracketed('[It] is', [box])}" for box in p.boxes]


def _ask_prompts(p: Prompting) -> list[str]:
    return [f"<grounding> Question:{render_bracketed(clean_text(p.text, 'The question'), p.boxes)} Answer:"]


def _free_prompts(p: Prompting) -> list[str]:
    return [("<grounding>" if p.grounding else "") + render_bracketed(clean_text(p.text, "The prompt"), p.boxes)]


_BRACKETS = "put the words it refers to in [brackets]"
PHRASES = "Phrases"  # the text label of the tasks whose text is a list of phrases, one a line

# fmt: off
# (the task table keeps one block per task: the formatter would give every argument a line of its own)
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("caption", "Grounded caption", "A brief caption; each object it mentions is located.",
             _fixed("<grounding> An image of"), tab="Caption", choice="Brief (grounded)", button="Describe",
             examples=(Example("cat.jpg"), Example("rocket.jpg"))),
        Task("detailed", "Detailed caption", "A detailed grounded description of the image.",
             _fixed("<grounding> Describe this image in detail:"), tab="Caption", choice="Detailed (grounded)",
             examples=(Example("coffee.jpg"),)),
        Task("plain", "Plain caption", "A brief caption without grounding (no boxes).",
             _fixed("An image of"), tab="Caption", choice="Brief, no grounding"),
        Task("ground", "Phrase grounding", "Locate each phrase (one per line) in the image.",
             _ground_prompts, tab="Phrase grounding", button="Find", text=PHRASES, text_lines=3,
             text_info="One phrase per line; all are located in one batch.", colour_by_row=True,
             examples=(Example("astronaut.jpg", "a woman\nthe flag"),
                       Example("coffee.jpg", "a cup of coffee\na spoon"))),
        Task("detect", "Detect every instance", "Find every instance of each phrase (one per line), each box with "
             "its score.", _detect_prompts, tab="Detect", button="Detect", text=PHRASES, text_lines=3,
             text_info="One phrase per line; all are searched in one batch.", colour_by_row=True, mode=DETECT,
             examples=(Example("coffee.jpg", "a cup\na spoon"), Example("astronaut.jpg", "a flag"))),
        Task("refer", "Describe a region", "Draw one or more boxes; the model describes each.",
             _refer_prompts, tab="Describe a region", button="Describe the boxes", image_label="Image: draw boxes",
             boxes="required", colour_by_row=True, colour_row_text=True,
             examples=(Example("cat.jpg", boxes=((280, 90, 360, 180),)),)),
        Task("ask", "Grounded VQA", "Ask a question; mark words that a drawn box refers to with [brackets].",
             _ask_prompts, tab="Ask", button="Ask", image_label="Image (optionally draw a box)", text="Question",
             text_info=f"With a box, {_BRACKETS}.", boxes="optional", answer_after=" Answer:",
             examples=(Example("rocket.jpg", "What is special about this image?"),
                       Example("cat.jpg", "What is [this animal] doing?", ((20, 10, 440, 295),)),
                       Example("coffee.jpg", "What is in [this cup]?", ((150, 80, 470, 330),)))),
        Task("prompt", "Free prompt", "Continue your own prompt; mark words that a drawn box refers to with "
             "[brackets].", _free_prompts, tab="Free prompt", button="Generate",
             image_label="Image (optionally draw boxes)", text="Prompt",
             text_info=f"Plain text; with boxes, {_BRACKETS}.", boxes="optional", grounding_option=True,
             examples=(Example("cameraman.jpg", "A black and white photo of"),)),
    )
}
# fmt: on


def find_task(name: str, tasks: Mapping[str, Task] = TASKS) -> Task:
    """The record of task ``name`` in ``tasks``; :class:`InputError` for an unknown name."""
    if name not in tasks:
        raise InputError(f"Unknown task {name!r}; choose one of: {', '.join(tasks)}.")
    return tasks[name]


def build_request(
    task: str | Task,
    image: Any,
    text: str | None = None,
    boxes: Any = None,
    grounding_on: bool = True,
    quarter_turns: int = 0,
) -> TaskRequest:
    """Validate the user's inputs for ``task`` (a name in :data:`TASKS`, or a record) and build its
    prompts (one per batch row).

    ``quarter_turns`` rotates the image clockwise first (the image annotator lets users rotate
    it and gives the boxes in the rotated frame).
    """
    spec = task if isinstance(task, Task) else find_task(task)
    img = load_image(image)
    if quarter_turns % 4:
        img = img.rotate(-90 * (quarter_turns % 4), expand=True)
    pixel_boxes = validate_boxes(parse_boxes(boxes), img.width, img.height)
    if spec.boxes == "none" and pixel_boxes:
        raise InputError(f"The task '{spec.name}' takes no boxes.")
    if spec.boxes == "required" and not pixel_boxes:
        raise InputError("No box: draw a box around the region to describe.")
    norm = tuple(normalise_box(b, img.width, img.height) for b in pixel_boxes)
    prompts = spec.prompts(Prompting(text, norm, bool(grounding_on)))
    box_colours = drawn_box_colours(boxes) if spec.boxes != "none" else ()
    return TaskRequest(
        spec.name,
        img,
        tuple(prompts),
        spec.colour_by_row,
        box_colours,
        spec.colour_row_text,
        spec.answer_after,
        len(pixel_boxes),
    )
