"""Annotated images: each entity's boxes in its own colour with a readable label (PIL only).

The app's download and the CLI both use :func:`annotate`; colours come from :func:`entity_colours`
so the HTML view, the PNG and the JSON agree.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
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
    """One entity to draw: its label, colour (``#rrggbb``), pixel boxes (x1, y1, x2, y2) and, per box, an
    optional score shown after the label."""

    label: str
    colour: str
    boxes: Sequence[PixelBox]
    scores: Sequence[float | None] = ()


def format_score(score: float) -> str:
    """A probability in a few characters that never reads 0 for a positive one: two decimals from 0.01
    (``0.87``), two significant digits below (``4.3e-5``)."""
    if score >= 0.01 or score == 0:
        return f"{score:.2f}"
    mantissa, exponent = f"{score:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def box_label(label: str, score: float | None) -> str:
    """A box's label: ``"a snowman · 0.87"``, or the label alone without a score."""
    return label if score is None else f"{label} · {format_score(score)}"


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


Rect = tuple[float, float, float, float]  # x1, y1, x2, y2


def _overlap(a: Rect, b: Rect) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(
    boxes: Sequence[Rect], sizes: Sequence[tuple[float, float]], width: float, height: float
) -> list[tuple[float, float]]:
    """The top-left corner of each box's label (``sizes``: width, height), inside the image and at one of its
    box's corners: above the top-left corner where nothing is in the way (inside it at the image's top).
    Smaller boxes choose first; each label takes the corner that covers least of the labels already placed
    and of the other boxes (as a share of each box, so that a small box is not hidden)."""
    placed: list[Rect] = [(0.0, 0.0, 0.0, 0.0)] * len(boxes)
    taken: list[Rect] = []
    for i in sorted(range(len(boxes)), key=lambda j: (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])):
        (x1, y1, x2, y2), (w, h) = boxes[i], sizes[i]
        corners = [
            (x1, y1 - h if y1 >= h else y1),
            (x1, y1),
            (x2 - w, y1 - h),
            (x1, y2),
            (x2 - w, y2 - h),
            (x2 - w, y2),
        ]

        def cost(corner: tuple[float, float], i: int = i, w: float = w, h: float = h) -> float:
            lx, ly = corner
            rect = (lx, ly, lx + w, ly + h)
            hidden = sum(
                _overlap(rect, b) / max((b[2] - b[0]) * (b[3] - b[1]), 1.0) for j, b in enumerate(boxes) if j != i
            )
            return 10 * sum(_overlap(rect, t) for t in taken) / max(w * h, 1.0) + hidden

        clamped = [
            (min(max(lx, 0.0), max(width - w, 0.0)), min(max(ly, 0.0), max(height - h, 0.0))) for lx, ly in corners
        ]
        lx, ly = min(clamped, key=cost)  # the first of equal ones
        placed[i] = (lx, ly, lx + w, ly + h)
        taken.append(placed[i])
    return [(r[0], r[1]) for r in placed]


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

    Box outlines scale with the image; labels are drawn over every box, placed by :func:`place_labels`
    (above a box's top-left corner unless that hides another label or box), on a filled background of
    the box colour with black or white text.
    """
    out = image.convert("RGB")
    width, height = out.size
    draw = ImageDraw.Draw(out)
    line = max(2, round(min(width, height) / 160))
    font = _font(max(10, round(min(width, height) / 32)))
    pad = max(1, line // 2 + 1)
    drawn = []  # (box, colour, label, the label's text bounding box)
    for ann in annotations:
        scores = list(ann.scores) + [None] * (len(ann.boxes) - len(ann.scores))
        for (x1, y1, x2, y2), score in zip(ann.boxes, scores):
            x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
            y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
            draw.rectangle((x1, y1, x2, y2), outline=hex_to_rgb(ann.colour), width=line)
            label = _fit_label(draw, box_label(ann.label, score) if ann.label else "", font, width - 2 * pad)
            drawn.append(((x1, y1, x2, y2), ann.colour, label, draw.textbbox((0, 0), label, font=font)))
    sizes = [
        (right - left + 2 * pad, bottom - top + 2 * pad) if label else (0, 0)
        for _, _, label, (left, top, right, bottom) in drawn
    ]
    corners = place_labels([box for box, *_ in drawn], sizes, width, height)
    for (_, colour, label, (left, top, _, _)), (box_w, box_h), (lx, ly) in zip(drawn, sizes, corners):
        if label:  # after every box, so that no outline crosses a label
            lx, ly = round(lx), round(ly)
            draw.rectangle((lx, ly, lx + box_w - 1, ly + box_h - 1), fill=hex_to_rgb(colour))
            draw.text((lx + pad - left, ly + pad - top), label, fill=text_colour_on(colour), font=font)
    return out


# matplotlib's "viridis" (perceptually uniform) at nine evenly spaced points, interpolated between
VIRIDIS = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#fde725")
HEAT_OPACITY = 0.6


def colormap(value: float) -> tuple[int, int, int]:
    """The viridis colour of ``value`` in [0, 1]."""
    x = min(max(value, 0.0), 1.0) * (len(VIRIDIS) - 1)
    k = min(int(x), len(VIRIDIS) - 2)
    low, high, t = hex_to_rgb(VIRIDIS[k]), hex_to_rgb(VIRIDIS[k + 1]), x - k
    r, g, b = (round(u + (v - u) * t) for u, v in zip(low, high))
    return r, g, b


def heat_overlay(image: Image.Image, density: Sequence[Sequence[float]]) -> Image.Image:
    """``image`` (RGB) with a density raster in [0, 1] (rows top to bottom, any size; see
    ``kosmos2.detection.density_map``) laid over it in viridis, transparent where the density is 0, and a
    legend (low .. high) in the lower-right corner."""
    base = image.convert("RGB")
    width, height = base.size
    raster = Image.new("L", (len(density[0]), len(density)))
    raster.putdata([round(v * 255) for row in density for v in row])
    raster = raster.resize((width, height), Image.Resampling.BILINEAR)
    lut = [colormap(i / 255) for i in range(256)]
    colours = Image.new("RGB", (256, 1))
    colours.putdata(lut)
    heat = raster.convert("RGB").point([c[channel] for channel in range(3) for c in lut])
    alpha = raster.point([round(HEAT_OPACITY * 255 * min(1.0, 4 * i / 255)) for i in range(256)])
    out = Image.composite(heat, base, alpha)
    _draw_legend(out, colours)
    return out


def _draw_legend(image: Image.Image, colours: Image.Image) -> None:
    """A colour bar labelled low .. high, in the image's lower-right corner."""
    width, height = image.size
    font = _font(max(10, round(min(width, height) / 32)))
    draw = ImageDraw.Draw(image)
    bar_w, bar_h = max(40, width // 4), max(6, height // 40)
    low_w, high_w = draw.textlength("low", font=font), draw.textlength("high", font=font)
    text_h = font.getbbox("high")[3]
    pad = max(2, bar_h // 2)
    box_w, box_h = int(bar_w + low_w + high_w + 4 * pad), int(max(bar_h, text_h) + 2 * pad)
    x0, y0 = max(0, width - box_w - pad), max(0, height - box_h - pad)
    draw.rectangle((x0, y0, x0 + box_w, y0 + box_h), fill=(255, 255, 255))
    draw.text((x0 + pad, y0 + pad), "low", fill=(0, 0, 0), font=font)
    bar_x = int(x0 + low_w + 2 * pad)
    image.paste(colours.resize((bar_w, bar_h)), (bar_x, int(y0 + (box_h - bar_h) / 2)))
    draw.text((bar_x + bar_w + pad, y0 + pad), "high", fill=(0, 0, 0), font=font)
