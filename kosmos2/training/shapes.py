"""Synthetic grounding scenes: coloured circles, squares and triangles on plain, gradient or noise
backgrounds, with every text KOSMOS-2 is trained on written from the true boxes. Deterministic for a seed;
PIL and numpy only (no torch).

A scene has 1-4 shapes, each 15-45 % of the image's shorter side, rotated (squares and triangles),
never touching another. Its boxes are the shapes' tight pixel boxes in the upright image. Some images are
stored turned, with the EXIF orientation that turns them back, so a reader must apply it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .. import grounding

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 20),
    "orange": (250, 130, 10),
    "purple": (140, 40, 180),
}
KINDS = ("circle", "square", "triangle")
PHRASES = tuple(f"a {colour} {kind}" for colour in COLOURS for kind in KINDS)  # the COCO categories, in order
NEUTRALS = ((245, 245, 245), (200, 200, 200), (128, 128, 128), (60, 60, 60), (20, 20, 20), (225, 215, 195))
SIZES = ((4, 3), (3, 4), (1, 1), (16, 9), (9, 16))  # width : height
LONG_SIDE = 320
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the turn that stores an upright image so that the orientation turns it back
STORED_TURN = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
GAP = 4  # pixels kept free between two shapes' boxes
MOST_SHAPES = 4


@dataclass(frozen=True)
class Shape:
    """One shape: its kind, colour, tight pixel box (x1, y1, x2, y2; exclusive right and bottom edges) in
    the upright image, and its outline."""

    kind: str
    colour: str
    box: tuple[int, int, int, int]
    outline: tuple[tuple[float, float], ...]  # the polygon drawn (a circle's: its bounding square)

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.kind}"

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class Scene:
    """One image: its file name, upright size, shapes, background kind and stored EXIF orientation (1: none)."""

    file: str
    width: int
    height: int
    shapes: tuple[Shape, ...]
    background: str
    orientation: int

    def normalised(self, shape: Shape) -> grounding.Box:
        """A shape's box as the model's normalised (x1, y1, x2, y2)."""
        x1, y1, x2, y2 = shape.box
        return (x1 / self.width, y1 / self.height, x2 / self.width, y2 / self.height)

    def markup(self, shapes: Sequence[Shape]) -> str:
        return grounding.object_markup([self.normalised(s) for s in shapes])


# --------------------------------------------------------------------------- drawing


def _polygon(kind: str, cx: float, cy: float, half: float, angle: float) -> list[tuple[float, float]]:
    if kind == "circle":
        return [(cx - half, cy - half), (cx + half, cy + half)]
    corners = 4 if kind == "square" else 3
    radius = half * (math.sqrt(2) if kind == "square" else 1.0)
    start = angle + (math.pi / 4 if kind == "square" else -math.pi / 2)
    return [
        (
            cx + radius * math.cos(start + 2 * math.pi * k / corners),
            cy + radius * math.sin(start + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def _tight_box(kind: str, points: list[tuple[float, float]], width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels PIL fills for the outline: measured by drawing it alone (exact, whatever PIL rounds)."""
    mask = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse(points, fill=1)
    else:
        draw.polygon(points, fill=1)
    box = mask.getbbox()
    assert box is not None
    return box


def _background(rng: random.Random, noise: np.random.Generator, width: int, height: int) -> tuple[str, Image.Image]:
    kind = rng.choice(("plain", "gradient", "noise"))
    if kind == "plain":
        return kind, Image.new("RGB", (width, height), rng.choice(NEUTRALS))
    if kind == "gradient":
        a, b = (np.array(c, dtype=np.float32) for c in rng.sample(NEUTRALS, 2))
        along = np.linspace(0, 1, width if rng.random() < 0.5 else height, dtype=np.float32)
        ramp = a + (b - a) * along[:, None]
        pixels = (
            np.broadcast_to(ramp[None, :, :], (height, width, 3))
            if len(along) == width
            else (np.broadcast_to(ramp[:, None, :], (height, width, 3)))
        )
        return kind, Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8))
    grey = noise.normal(rng.choice((90.0, 128.0, 170.0)), 25.0, (height, width, 1)).clip(0, 255)
    return kind, Image.fromarray(np.repeat(grey, 3, axis=2).astype(np.uint8))  # grey noise: never a shape's colour


def _place(rng: random.Random, width: int, height: int, count: int) -> list[Shape]:
    shapes: list[Shape] = []
    short = min(width, height)
    for _ in range(200):  # rejection sampling; a crowded draw ends with fewer shapes
        if len(shapes) == count:
            break
        kind, colour = rng.choice(KINDS), rng.choice(list(COLOURS))
        half = rng.uniform(0.15, 0.45) * short / 2
        angle = rng.uniform(0, 2 * math.pi) if kind != "circle" else 0.0
        reach = half * (math.sqrt(2) if kind == "square" else 1.0) + 1
        if 2 * reach >= min(width, height):
            continue
        cx, cy = rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)
        points = _polygon(kind, cx, cy, half, angle)
        box = _tight_box(kind, points, width, height)
        if all(_apart(box, s.box) for s in shapes):
            shapes.append(Shape(kind, colour, box, tuple(points)))
    return shapes


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def make_scene(seed: int, index: int, exif_share: float = 0.15, most: int = MOST_SHAPES) -> tuple[Scene, Image.Image]:
    """Scene ``index`` of the set seeded by ``seed`` with 1 to ``most`` shapes, and its upright image (the same
    for the same arguments)."""
    rng = random.Random(f"{seed}:{index}")
    noise = np.random.default_rng([seed, index])
    w, h = rng.choice(SIZES)
    width, height = (LONG_SIDE, LONG_SIDE * h // w) if w >= h else (LONG_SIDE * w // h, LONG_SIDE)
    background, image = _background(rng, noise, width, height)
    shapes = _place(rng, width, height, rng.randint(1, most))
    draw = ImageDraw.Draw(image)
    for s in shapes:
        if s.kind == "circle":
            draw.ellipse(s.outline, fill=COLOURS[s.colour])
        else:
            draw.polygon(s.outline, fill=COLOURS[s.colour])
    orientation = rng.choice(sorted(STORED_TURN)) if rng.random() < exif_share else 1
    scene = Scene(f"images/scene-{seed}-{index:05d}.png", width, height, tuple(shapes), background, orientation)
    return scene, image


def save_image(scene: Scene, image: Image.Image, folder: Path) -> None:
    """Write the scene's PNG under ``folder`` (its file name is relative to the data set's folder): turned
    and tagged when it has an EXIF orientation, so that it shows upright."""
    if scene.orientation == 1:
        image.save(folder / scene.file)
        return
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = scene.orientation
    image.transpose(STORED_TURN[scene.orientation]).save(folder / scene.file, exif=exif.tobytes())


# --------------------------------------------------------------------------- texts


def _by_phrase(scene: Scene) -> dict[str, list[Shape]]:
    """The scene's phrases, left to right by their first shape, each with its shapes in that order."""
    groups: dict[str, list[Shape]] = {}
    for s in sorted(scene.shapes, key=lambda s: s.centre[0]):
        groups.setdefault(s.phrase, []).append(s)
    return groups


def _caption_parts(scene: Scene) -> list[tuple[str, str, list[Shape]]]:
    """The caption's phrases in order, each with the words before it (after the previous phrase) and its shapes."""
    groups = list(_by_phrase(scene).items())
    return [
        ("" if k == 0 else (" and" if k == len(groups) - 1 else ","), phrase, shapes)
        for k, (phrase, shapes) in enumerate(groups)
    ]


def caption(scene: Scene) -> tuple[str, str, list[dict[str, Any]]]:
    """The brief grounded caption: its model text, its clean caption and the caption's entities (phrase,
    span, normalised boxes), as ``label`` writes them."""
    text, clean = "<grounding> An image of", "An image of"
    entities = []
    for joiner, phrase, shapes in _caption_parts(scene):
        text += f"{joiner}<phrase> {phrase}</phrase>{scene.markup(shapes)}"
        clean += f"{joiner} "
        entities.append({"phrase": phrase, "span": [len(clean), len(clean) + len(phrase)],
                         "boxes": [list(scene.normalised(s)) for s in shapes]})  # fmt: skip
        clean += phrase
    return text + ".", clean + ".", entities


def _relation(a: Shape, b: Shape) -> str | None:
    """How ``a`` lies to ``b`` when it is beyond it on one axis (the boxes do not overlap on that axis)."""
    if a.box[2] <= b.box[0]:
        return "left of"
    if a.box[0] >= b.box[2]:
        return "right of"
    if a.box[3] <= b.box[1]:
        return "above"
    if a.box[1] >= b.box[3]:
        return "below"
    return None


def referring(scene: Scene) -> Iterator[tuple[str, Shape]]:
    """Unambiguous referring expressions and the shape each names: ``the red circle`` when it is the only
    one, and ``the circle left of the blue square`` when that circle is the only one of its kind and the
    blue square the only one of its phrase."""
    phrases = [s.phrase for s in scene.shapes]
    kinds = [s.kind for s in scene.shapes]
    for s in scene.shapes:
        if phrases.count(s.phrase) == 1:
            yield f"the {s.colour} {s.kind}", s
    for a in scene.shapes:
        for b in scene.shapes:
            if a is b or kinds.count(a.kind) != 1 or phrases.count(b.phrase) != 1 or a.kind == b.kind:
                continue
            if (relation := _relation(a, b)) is not None:
                yield f"the {a.kind} {relation} the {b.colour} {b.kind}", a


def texts(scene: Scene) -> Iterator[tuple[str, str]]:
    """(prompt, answer) pairs in KOSMOS-2's formats: the grounded caption, phrase grounding (every instance
    of a phrase; alone, and after the caption's words before it, as Flickr30k Entities is evaluated), referring
    expressions, region description from a box, and grounded question answering."""
    full, _, _ = caption(scene)
    yield grounding_split(full)
    before = "<grounding> An image of"
    for joiner, phrase, shapes in _caption_parts(scene):
        yield f"<grounding><phrase> {phrase}</phrase>", scene.markup(shapes)
        yield f"{before}{joiner}<phrase> {phrase}</phrase>", scene.markup(shapes)
        before += f"{joiner} {phrase}"
    for expression, s in referring(scene):
        yield f"<grounding><phrase> {expression}</phrase>", scene.markup([s])
    for s in scene.shapes:
        yield (
            f"<grounding><phrase> It</phrase>{scene.markup([s])} is",
            f"<phrase> {s.phrase}</phrase>{scene.markup([s])}.",
        )
    kinds = [s.kind for s in scene.shapes]
    for s in scene.shapes:
        if kinds.count(s.kind) == 1:
            yield f"<grounding> Question: What colour is the {s.kind}? Answer:", f" {s.colour}."


def grounding_split(text: str) -> tuple[str, str]:
    """A caption's model text as the prompt the app gives and the answer after it."""
    prompt = "<grounding> An image of"
    return prompt, text[len(prompt) :]


# --------------------------------------------------------------------------- the data set


def write_dataset(
    folder: Path, count: int, seed: int, exif_share: float = 0.15, most: int = MOST_SHAPES
) -> dict[str, int]:
    """Write ``count`` scenes to ``folder``: ``images/`` (every file names its images relative to ``folder``),
    ``labels.jsonl`` (a caption-task label journal, with
    its ``.run.json``), ``coco.json``, ``refexp.jsonl`` and ``grounded.jsonl`` (every text). Returns counts."""
    images = folder / "images"
    images.mkdir(parents=True)
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": k + 1, "name": p} for k, p in enumerate(PHRASES)]}  # fmt: skip
    journal, refexp, grounded = [], [], []
    for index in range(count):
        scene, image = make_scene(seed, index, exif_share, most)
        save_image(scene, image, folder)
        coco["images"].append({"id": index + 1, "file_name": scene.file, "width": scene.width, "height": scene.height})
        for s in scene.shapes:
            x1, y1, x2, y2 = s.box
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": index + 1, "category_id": PHRASES.index(s.phrase) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })  # fmt: skip
        _, clean, entities = caption(scene)
        journal.append({"file": scene.file, "width": scene.width, "height": scene.height, "caption": clean,
                        "entities": entities})  # fmt: skip
        refexp += [{"image": scene.file, "expression": e, "box": list(s.box)} for e, s in referring(scene)]
        grounded += [{"image": scene.file, "text": p + a, "prompt": p} for p, a in texts(scene)]
    _write_lines(folder / "labels.jsonl", journal)
    run = {"task": "caption", "phrases": [], "source": f"kosmos2 shapes --count {count} --seed {seed}"}
    (folder / "labels.jsonl.run.json").write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    (folder / "coco.json").write_text(json.dumps(coco) + "\n", encoding="utf-8")
    _write_lines(folder / "refexp.jsonl", refexp)
    _write_lines(folder / "grounded.jsonl", grounded)
    return {"images": count, "shapes": len(coco["annotations"]), "expressions": len(refexp), "texts": len(grounded)}


def _write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
