"""The linked HTML view of a result: the image with an SVG overlay of boxes, and the caption with
its phrases coloured like their boxes. Hovering a phrase or a box highlights its partner with
pure CSS (``:has()``), so it works inside a Gradio ``HTML`` component, which runs no scripts; so does a
tap on a touch screen (or the keyboard), which focuses it: each one has a ``tabindex``.

All text is escaped; the image is embedded as a base64 JPEG.
"""

from __future__ import annotations

import base64
import html
import io
import uuid

from PIL import Image

from .draw import box_label, place_labels, readable_on_white, text_colour_on
from .results import TaskResult

_CSS = """
#{uid} {{ font-family: system-ui, sans-serif; }}
#{uid} .k2-stage {{ position: relative; display: inline-block; max-width: 100%; line-height: 0; }}
#{uid} .k2-stage img {{ max-width: 100%; max-height: 560px; display: block; }}
#{uid} .k2-stage svg {{ position: absolute; inset: 0; width: 100%; height: 100%; overflow: visible; }}
#{uid} rect.k2-box {{ fill-opacity: 0.04; stroke-width: 3px; vector-effect: non-scaling-stroke;
  transition: stroke-width .1s, fill-opacity .1s, opacity .1s; cursor: pointer; }}
#{uid} .k2-caption {{ margin-top: .6em; font-size: 1.15em; line-height: 1.6; white-space: pre-wrap;
  overflow-wrap: anywhere; }}
#{uid} .k2-row {{ padding-left: .5em; border-left: 4px solid transparent; }}
#{uid} .k2-ph {{ border-bottom: 3px solid var(--c); border-radius: 3px; padding: 0 2px; cursor: pointer;
  transition: background .1s; }}
#{uid} [data-e]:focus {{ outline: none; }}
#{uid}:has([data-e]:is(:hover, :focus)) rect.k2-box {{ opacity: .35; }}
#{uid}:has([data-e]:is(:hover, :focus)) g.k2-label {{ opacity: .35; }}
"""

_CSS_ENTITY = """
#{uid}:has([data-e="{i}"]:is(:hover, :focus)) rect.k2-box[data-e="{i}"] {{ opacity: 1; stroke-width: 6px; fill-opacity: .3; }}
#{uid}:has([data-e="{i}"]:is(:hover, :focus)) g.k2-label[data-e="{i}"] {{ opacity: 1; }}
#{uid}:has([data-e="{i}"]:is(:hover, :focus)) span.k2-ph[data-e="{i}"] {{ background: {c}; color: {fg}; }}
"""


def image_data_uri(image: Image.Image, max_side: int = 800) -> str:
    """A base64 JPEG data URI of ``image`` downscaled to at most ``max_side`` pixels."""
    shown = image.convert("RGB")
    if max(shown.size) > max_side:
        shown.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    shown.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _caption_html(result: TaskResult) -> str:
    rows = []
    for row, (start, end) in enumerate(result.row_spans):
        start = max(start, min(result.shown_from, end))
        pieces, pos = [], start
        row_entities = sorted(
            ((i, e) for i, e in enumerate(result.entities) if e.row == row and e.span[1] > e.span[0]),
            key=lambda ie: ie[1].span,
        )
        for i, e in row_entities:
            s, t = e.span
            if s < pos:  # overlaps the previous phrase, or is not shown: its boxes are still drawn
                continue
            pieces.append(html.escape(result.caption[pos:s]))
            if i in result.box_numbers:  # a drawn box's phrase: its number first, as on the image
                pieces.append(
                    f'<span class="k2-boxno" style="background:{e.colour};color:{text_colour_on(e.colour)};'
                    f'border-radius:4px;padding:0 .3em;font-size:.8em">Box {result.box_numbers[i]}</span> '
                )
            pieces.append(
                f'<span class="k2-ph" data-e="{i}" tabindex="0" style="--c:{e.colour}">'
                f"{html.escape(result.caption[s:t])}</span>"
            )
            pos = t
        pieces.append(html.escape(result.caption[pos:end]))
        colour = result.row_colours[row]
        # one colour per row (phrase grounding, region description): a bar, and the text too where the
        # task says so (a region's description in its box's colour)
        text_colour = f";color:{readable_on_white(colour)}" if colour and result.colour_row_text else ""
        style = f' style="border-left-color:{colour}{text_colour}"' if colour else ""
        rows.append(f'<div class="k2-row"{style}>{"".join(pieces)}</div>')
    return "".join(rows)


def _overlay_svg(result: TaskResult) -> str:
    width, height = result.image_size
    font = max(10.0, max(width, height) / 34)
    boxes = [
        (i, e, b, box_label(result.label(i), score))
        for i, e in enumerate(result.entities)
        for b, score in zip(e.pixel_boxes, e.scores + [None] * (len(e.pixel_boxes) - len(e.scores)))
    ]
    boxes.sort(key=lambda ieb: -(ieb[2][2] - ieb[2][0]) * (ieb[2][3] - ieb[2][1]))  # small boxes on top
    sizes = [(min(width, 0.6 * font * len(label) + font * 0.6), font * 1.3) for *_, label in boxes]
    corners = place_labels([b for _, _, b, _ in boxes], sizes, width, height)
    rects, labels = [], []
    for (i, e, (x1, y1, x2, y2), label), (label_w, label_h), (lx, ly) in zip(boxes, sizes, corners):
        rects.append(
            f'<rect class="k2-box" data-e="{i}" tabindex="0" x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" '
            f'height="{y2 - y1:.1f}" stroke="{e.colour}" fill="{e.colour}"><title>'
            f"{html.escape(label)}</title></rect>"
        )
        labels.append(
            f'<g class="k2-label" data-e="{i}" pointer-events="none">'
            f'<rect x="{lx:.1f}" y="{ly:.1f}" width="{label_w:.1f}" height="{label_h:.1f}" '
            f'fill="{e.colour}"/><text x="{lx + font * 0.3:.1f}" y="{ly + font:.1f}" '
            f'font-size="{font:.1f}" fill="{text_colour_on(e.colour)}" '
            f'textLength="{label_w - font * 0.6:.1f}" '
            f'lengthAdjust="spacingAndGlyphs">{html.escape(label)}</text></g>'
        )
    return (
        f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">'
        f"{''.join(rects)}{''.join(labels)}</svg>"
    )


def render(image_uri: str, result: TaskResult) -> str:
    """The HTML of ``result`` over the image given as a data URI (:func:`image_data_uri` of the
    image the model saw, made once per request)."""
    uid = f"k2v{uuid.uuid4().hex[:12]}"  # unique per render, no shared counter
    css = _CSS.format(uid=uid) + "".join(
        _CSS_ENTITY.format(uid=uid, i=i, c=e.colour, fg=text_colour_on(e.colour)) for i, e in enumerate(result.entities)
    )
    status = "" if result.done else '<div class="k2-status">generating…</div>'
    return (
        f'<div id="{uid}" class="k2-view"><style>{css}</style>'
        f'<div class="k2-stage"><img src="{image_uri}" alt="input image">{_overlay_svg(result)}</div>'
        f'<div class="k2-caption">{_caption_html(result)}</div>{status}</div>'
    )


EMPTY_RESULT = "The result appears here: choose an example or an image, then press the button."


def notice(text: str, error: bool = False) -> str:
    """A line of text where a result goes: a failed run's message (``error``), or :data:`EMPTY_RESULT`."""
    style = "border:1px solid #d33;background:#fdecea;color:#8a1c1c" if error else "border:1px dashed #bbb;color:#666"
    icon = "⚠️ " if error else ""
    return (
        f'<div class="k2-notice{" k2-error" if error else ""}" role="{"alert" if error else "status"}" '
        f'style="{style};border-radius:8px;padding:1em;min-height:3em">{icon}{html.escape(text)}</div>'
    )
