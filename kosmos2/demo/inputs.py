"""The user's inputs, untrusted: images, text and boxes, parsed and checked.

Every problem raises :class:`InputError` (a ``ValueError``) with a message meant to be shown as it
is: no paths, no traces. User text is plain text: the model's markup is stripped from it, so only
the prompt builders of :mod:`kosmos2.demo.tasks` ever write tags.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from ..errors import UserError
from ..grounding import Box, PixelBox
from ..image_processing import ImageError, ImageSource, check_pixel_count, open_image, to_rgb
from .draw import rgb_to_hex

MAX_TEXT_CHARS = 1000
MAX_BOXES = 8
MAX_PHRASES = 8
MAX_IMAGE_PIXELS = 40_000_000


class InputError(UserError, ValueError):
    """A problem with the user's input; the message is meant for the user."""


# --------------------------------------------------------------------------- text

_TAG = re.compile(r"<[^<>]*>")


def neutralise_markup(text: str) -> str:
    """Remove every ``<...>`` tag from user text, repeatedly, so none can survive (``<<a>b>``)."""
    while True:
        stripped = _TAG.sub("", text)
        if stripped == text:
            return text
        text = stripped


def clean_text(text: str | None, what: str = "Text", max_chars: int = MAX_TEXT_CHARS) -> str:
    """Validate and neutralise one user text field; return it stripped, whitespace collapsed."""
    if text is None or not str(text).strip():
        raise InputError(f"{what} is empty: please type something.")
    text = str(text)
    if len(text) > max_chars:
        raise InputError(f"{what} is too long ({len(text)} characters); the limit is {max_chars}.")
    text = re.sub(r"\s+", " ", neutralise_markup(text)).strip()
    if not text:
        raise InputError(f"{what} contains only markup tags, which are not allowed: please type plain text.")
    if "<" in text:  # the output's clean-up would take it for the start of a tag and drop the text up to one
        raise InputError(
            f"{what} contains '<', which this demo cannot pass to the model as it is: "
            "please write it in words (for example 'less than')."
        )
    return text


def parse_phrases(text: str | None, max_phrases: int = MAX_PHRASES) -> list[str]:
    """Phrases for grounding, one per non-empty line, each cleaned."""
    if text is None or not str(text).strip():
        raise InputError("Phrases are empty: type at least one phrase (one per line).")
    if len(str(text)) > MAX_TEXT_CHARS:
        raise InputError(f"Phrases are too long ({len(str(text))} characters); the limit is {MAX_TEXT_CHARS}.")
    lines = [line for line in str(text).splitlines() if line.strip()]
    if len(lines) > max_phrases:
        raise InputError(f"Too many phrases ({len(lines)}); the limit is {max_phrases}.")
    return [clean_text(line, what=f"Phrase {i + 1}") for i, line in enumerate(lines)]


# --------------------------------------------------------------------------- images

_IMAGE_MESSAGES = {
    "missing": "Could not read the image: no such file.",
    "folder": "Could not read the image: the path is a folder, not a file.",
    "unreadable": "Could not read the image: the file cannot be read (no permission, or not a regular file).",
    "unsupported": "Could not read the image: it is not a supported image file.",
    "damaged": "Could not read the image: the file is damaged or truncated.",
    "empty": "The image is empty (zero width or height).",
}


def load_image(value: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An upright RGB image from a path, the bytes of a file, a binary file object, a numpy array or a
    PIL image.

    A file's pixel count is checked from its header, before anything is decoded. EXIF orientation
    is applied (the image as a phone shows it); an animation gives its first frame; 16-bit and
    32-bit integer images are scaled to 8 bits; transparency is composited onto white (see
    :func:`kosmos2.image_processing.to_rgb`).
    """
    if value is None:
        raise InputError("No image: please upload an image first.")
    try:
        binary_file = isinstance(value, io.IOBase) and not isinstance(value, io.TextIOBase)
        if isinstance(value, (str, Path, bytes)) or binary_file:
            value = open_image(cast(ImageSource, value), max_pixels)
        else:
            if isinstance(value, np.ndarray):
                value = _array_image(value)
            elif not isinstance(value, Image.Image):
                raise InputError(f"Unsupported image value of type {type(value).__name__}.")
            check_pixel_count(value.size, max_pixels)
        return to_rgb(value, as_displayed=True)
    except ImageError as e:
        if e.kind == "too_large":
            raise InputError(_too_large(e.size, e.limit or max_pixels)) from e
        raise InputError(_IMAGE_MESSAGES[e.kind]) from e


def _array_image(array: np.ndarray) -> Image.Image:
    try:
        return Image.fromarray(array)
    except TypeError as e:
        raise InputError(f"Unsupported image array of shape {array.shape} and type {array.dtype}.") from e


def _too_large(size: tuple[int, int] | None, limit: int) -> str:
    shown = f" ({size[0]}×{size[1]} pixels)" if size else ""
    return f"The image is too large{shown}; the limit is {limit / 1e6:g} megapixels."


# --------------------------------------------------------------------------- boxes


def parse_boxes(value: Any) -> list[PixelBox]:
    """Boxes as (x1, y1, x2, y2) from ``None``/``""``, a string ``"x1,y1,x2,y2; ..."``, a list of
    four numbers each, or the image annotator's dicts (``xmin``/``ymin``/``xmax``/``ymax``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        groups = [g for g in re.split(r"[;\n]+", value) if g.strip()]
        value = [re.split(r"[,\s]+", g.strip()) for g in groups]
    if not isinstance(value, (list, tuple)):
        raise InputError("Boxes must be a list of [x1, y1, x2, y2].")
    boxes = []
    for i, box in enumerate(value):
        if isinstance(box, dict):
            box = [box.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            coords = tuple(float(c) for c in box)
        except (TypeError, ValueError) as e:
            raise InputError(f"Box {i + 1} is not four numbers x1, y1, x2, y2.") from e
        if len(coords) != 4 or not all(math.isfinite(c) for c in coords):
            raise InputError(f"Box {i + 1} is not four finite numbers x1, y1, x2, y2.")
        boxes.append(coords)
    return boxes


def drawn_box_colours(value: Any) -> tuple[str, ...]:
    """The ``#rrggbb`` colour of each of the image annotator's boxes, so results reuse the colours the
    user drew with; ``()`` unless every box is such a dict with an RGB ``color``."""
    if not isinstance(value, (list, tuple)) or not value:
        return ()
    colours = []
    for box in value:
        rgb = box.get("color") if isinstance(box, dict) else None
        if not (
            isinstance(rgb, (list, tuple)) and len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)
        ):
            return ()
        colours.append(rgb_to_hex(tuple(rgb)))
    return tuple(colours)


def validate_boxes(boxes: Sequence[PixelBox], width: int, height: int, max_boxes: int = MAX_BOXES) -> list[PixelBox]:
    """Put each box's corners in order and clip it to the image; reject empty boxes and too many."""
    if len(boxes) > max_boxes:
        raise InputError(f"Too many boxes ({len(boxes)}); the limit is {max_boxes}.")
    out = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
        y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise InputError(f"Box {i + 1} is empty: it has no area inside the image.")
        out.append((x1, y1, x2, y2))
    return out


def normalise_box(box: PixelBox, width: int, height: int) -> Box:
    """Pixel box -> box in [0, 1] relative to the image size."""
    x1, y1, x2, y2 = box
    return (x1 / width, y1 / height, x2 / width, y2 / height)
