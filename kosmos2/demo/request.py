"""A validated request: what every way of running a task gets (built by :func:`kosmos2.demo.tasks.build_request`)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class TaskRequest:
    """A validated request: the image (RGB, as the model sees it) and one prompt per batch row."""

    task: str
    image: Image.Image
    prompts: tuple[str, ...]
    colour_by_row: bool = False  # one colour per row (phrase grounding, region description)
    box_colours: tuple[str, ...] = ()  # the colours the user's boxes were drawn with, in the order drawn
    colour_row_text: bool = False  # each row's text in its colour too
    answer_after: str = ""  # see Task.answer_after
    drawn_boxes: int = 0  # how many boxes the user gave (numbered "Box 1", "Box 2" in the result)
