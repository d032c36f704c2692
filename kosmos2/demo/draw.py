"""Annotated images: each entity's boxes in its own colour with a readable label (PIL only).

The app's download and the CLI both use :func:`annotate`; colours come from :func:`entity_colours`
so the HTML view, the PNG and the JSON agree.
"""

from __future__ import annotations

import atexit
import colorsys
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

from ..grounding import PixelBox

# Well-separated colours, ordered so that neighbours differ strongly in hue and lightness.
PALETTE = (
    "#e6194b",  # red
    "#3cb44b",  # green
    "#4363d8",  # blue
    "#f58231",  # orange
    "#911eb4",  # purple
    "#42d4f4",  # cyan
    "#f032e6",  # magenta
    "#bfef45",  # lime
    "#9a6324",  # brown
    "#469990",  # teal
    "#ffe119",  # yellow
    "#800000",  # maroon
)
_GOLDEN = 0.6180339887498949


class Annotation(NamedTuple):
    """One entity to draw: its label, colour (``#rrggbb``) and pixel boxes (x1, y1, x2, y2)."""

    label: str
    colour: str
    boxes: Sequence[PixelBox]


def entity_colours(n: int) -> list[str]:
    """``n`` distinct colours: the palette first, then golden-ratio hues for any number beyond it."""
    if n < 0:
        raise ValueError(f"number of colours must be >= 0, got {n}")
    colours = list(PALETTE[:n])
    for i in range(n - len(colours)):
        hue = (0.05 + i * _GOLDEN) % 1.0
        value = 0.95 if i % 2 == 0 else 0.7
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        colours.append(rgb_to_hex((round(r * 255), round(g * 255), round(b * 255))))
    return colours


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` -> (r, g, b)."""
    if len(colour) != 7 or not colour.startswith("#"):
        raise ValueError(f"colour must look like '#rrggbb', got {colour!r}")
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def rgb_to_hex(rgb: tuple[int, int, int]) -> str:
    """(r, g, b) -> ``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _luminance(colour: str) -> float:
    """WCAG relative luminance of ``#rrggbb`` (0 black .. 1 white)."""

    def linear(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in hex_to_rgb(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_colour_on(colour: str) -> str:
    """Black or white, whichever contrasts more with ``colour``."""
    return "#000000" if _luminance(colour) > 0.179 else "#ffffff"


def readable_on_white(colour: str) -> str:
    """``colour`` for text on white: darkened when its contrast with white is below 3:1."""
    if _luminance(colour) <= 0.3:  # (1 + 0.05) / (0.3 + 0.05) = 3
        return colour
    r, g, b = hex_to_rgb(colour)
    return rgb_to_hex((round(r * 0.55), round(g * 0.55), round(b * 0.55)))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fit_label(draw: ImageDraw.ImageDraw, label: str, font, max_width: int) -> str:
    """Shorten ``label`` with an ellipsis until it is at most ``max_width`` pixels wide."""
    if draw.textlength(label, font=font) <= max_width:
        return label
    while label and draw.textlength(label + "…", font=font) > max_width:
        label = label[:-1]
    return label + "…" if label else ""


def annotate(image: Image.Image, annotations: Sequence[Annotation]) -> Image.Image:
    """A copy of ``image`` (RGB) with every annotation's boxes and labels drawn on it.

    Box outlines scale with the image; labels sit above a box's top-left corner when there is
    room, inside the box otherwise, and are always kept inside the image on a filled background
    of the box colour with black or white text.
    """
    out = image.convert("RGB")
    width, height = out.size
    draw = ImageDraw.Draw(out)
    line = max(2, round(min(width, height) / 160))
    font = _font(max(10, round(min(width, height) / 32)))
    pad = max(1, line // 2 + 1)
    for ann in annotations:
        fill = hex_to_rgb(ann.colour)
        for x1, y1, x2, y2 in ann.boxes:
            x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
            y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
            draw.rectangle((x1, y1, x2, y2), outline=fill, width=line)
            label = _fit_label(draw, ann.label, font, width - 2 * pad)
            if not label:
                continue
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
            lx = min(max(x1, 0), width - box_w)
            ly = y1 - box_h if y1 - box_h >= 0 else y1
            ly = min(max(ly, 0), height - box_h)
            draw.rectangle((lx, ly, lx + box_w - 1, ly + box_h - 1), fill=fill)
            draw.text((lx + pad - left, ly + pad - top), label, fill=text_colour_on(ann.colour), font=font)
    return out


def save_png_tempfile(image: Image.Image, folder: str | None = None, prefix: str = "kosmos2-") -> str:
    """Save ``image`` as PNG into a fresh private temporary file (never a shared name) in ``folder``
    (default: the system's temporary folder); return its path."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".png", dir=folder)
    with os.fdopen(fd, "wb") as f:
        image.save(f, format="PNG", compress_level=1)  # fast: level 6 costs ~0.2 s per megapixel
    return path


class OutputFolder:
    """A private temporary folder (removed at exit) of annotated PNGs, one fresh file per result, pruned
    before each save: files older than ``max_age_s`` go, then the oldest until fewer than ``max_files``
    remain. Thread-safe."""

    def __init__(self, max_files: int, max_age_s: float) -> None:
        self.max_files = max_files
        self.max_age_s = max_age_s
        self._path: str | None = None
        self._lock = threading.Lock()

    def save(self, image: Image.Image) -> str:
        """Save ``image`` as a new PNG in the folder; return its path."""
        with self._lock:
            if self._path is None:
                self._path = tempfile.mkdtemp(prefix="kosmos2-out-")
                atexit.register(shutil.rmtree, self._path, ignore_errors=True)
            files = sorted(Path(self._path).glob("*.png"), key=lambda p: p.stat().st_mtime)
            cutoff = time.time() - self.max_age_s
            for i, old in enumerate(files):
                if old.stat().st_mtime < cutoff or len(files) - i >= self.max_files:
                    old.unlink()
            return save_png_tempfile(image, self._path)
