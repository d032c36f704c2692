"""The demo's tasks, independent of any UI: prompts, input validation, model loading and a
streaming runner.

Every user-facing problem raises :class:`InputError` (a ``ValueError``) with a message meant to
be shown as it is. User text is plain text: the model's markup is stripped from it before a
prompt is built, so only this module ever writes tags.
"""

from __future__ import annotations

import atexit
import io
import logging
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import grounding
from .draw import Annotation, entity_colours, rgb_to_hex

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "microsoft/kosmos-2-patch14-224"
TINY_CHECKPOINT = "tiny"
MAX_TEXT_CHARS = 1000
MAX_BOXES = 8
MAX_PHRASES = 8
MAX_IMAGE_PIXELS = 40_000_000
MAX_NEW_TOKENS_CAP = 512
MAX_BATCH_SIZE = 4  # concurrent requests' rows decoded together

PixelBox = tuple[float, float, float, float]
NormBox = tuple[float, float, float, float]


class InputError(ValueError):
    """A problem with the user's input; the message is meant for the user."""


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """One demo task: its name (CLI ``--task`` and API endpoint), title and what it needs."""

    name: str
    title: str
    description: str
    text: str | None = None  # label of the text field, None when the task takes no text
    boxes: str = "none"  # "none", "optional" or "required"


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("caption", "Grounded caption", "A brief caption; each object it mentions is located."),
        Task("detailed", "Detailed caption", "A detailed grounded description of the image."),
        Task("plain", "Plain caption", "A brief caption without grounding (no boxes)."),
        Task("ground", "Phrase grounding", "Locate each phrase (one per line) in the image.", text="Phrases"),
        Task("refer", "Describe a region", "Draw one or more boxes; the model describes each.", boxes="required"),
        Task("ask", "Grounded VQA", "Ask a question; mark words that a drawn box refers to with [brackets].",
             text="Question", boxes="optional"),
        Task("prompt", "Free prompt", "Continue your own prompt; mark words that a drawn box refers to with "
             "[brackets].", text="Prompt", boxes="optional"),
    )
}


@dataclass(frozen=True)
class TaskRequest:
    """A validated request: the image (RGB, as the model sees it) and one prompt per batch row."""

    task: str
    image: Image.Image
    prompts: tuple[str, ...]
    colour_by_row: bool = False  # one colour per row (phrase grounding, region description)
    row_colours: tuple[str, ...] = ()  # the rows' colours when the user's drawn boxes bring them


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


# --------------------------------------------------------------------------- images and boxes


def load_image(value: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An upright RGB image from a path, the bytes of a file, a numpy array or a PIL image.

    A file's pixel count is checked from its header, before anything is decoded. EXIF orientation
    is applied (the image as a phone shows it); an animation gives its first frame; 16-bit and
    32-bit integer images (taken as 0..65535) are scaled to 8 bits; transparency is composited onto white.
    """
    if value is None:
        raise InputError("No image: please upload an image first.")
    if isinstance(value, bytes):
        value = io.BytesIO(value)
    if isinstance(value, (str, Path, io.BytesIO)):
        try:
            with Image.open(value) as image:
                _check_pixels(image.size, max_pixels)
                return _upright_rgb(image)
        except Image.DecompressionBombError as e:
            raise InputError(f"The image is too large; the limit is {max_pixels / 1e6:g} megapixels.") from e
        except UnidentifiedImageError as e:
            raise InputError("Could not read the image: it is not a supported image file.") from e
        except (OSError, SyntaxError, struct.error) as e:  # pillow's errors for damaged or truncated data
            raise InputError("Could not read the image: the file is damaged or truncated.") from e
    if isinstance(value, np.ndarray):
        try:
            value = Image.fromarray(value)
        except TypeError as e:
            raise InputError(f"Unsupported image array of shape {value.shape} and type {value.dtype}.") from e
    if not isinstance(value, Image.Image):
        raise InputError(f"Unsupported image value of type {type(value).__name__}.")
    _check_pixels(value.size, max_pixels)
    return _upright_rgb(value)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InputError("The image is empty (zero width or height).")
    if width * height > max_pixels:
        raise InputError(
            f"The image is too large ({width}×{height} pixels); the limit is {max_pixels / 1e6:g} megapixels."
        )


def _upright_rgb(image: Image.Image) -> Image.Image:
    """Decode ``image`` (its current frame), apply its EXIF orientation and make it 8-bit RGB."""
    image = ImageOps.exif_transpose(image)  # a decoded copy
    if image.mode.startswith("I"):  # 16-bit ("I;16...") or 32-bit integer grey: 0..65535 -> 0..255
        grey = np.asarray(image.convert("I"), dtype=np.int64)
        image = Image.fromarray((np.clip(grey, 0, 65535) // 257).astype(np.uint8))  # (H, W) -> "L"
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


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
        if not (isinstance(rgb, (list, tuple)) and len(rgb) == 3
                and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
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


def normalise_box(box: PixelBox, width: int, height: int) -> NormBox:
    """Pixel box -> box in [0, 1] relative to the image size."""
    x1, y1, x2, y2 = box
    return (x1 / width, y1 / height, x2 / width, y2 / height)


# --------------------------------------------------------------------------- prompts


def object_markup(box: NormBox) -> str:
    """``<object><patch_index_A><patch_index_B></object>`` for a normalised box."""
    first, last = grounding.box_to_patch_indices(box)
    return f"<object>{grounding.patch_index_token(first)}{grounding.patch_index_token(last)}</object>"


def render_bracketed(text: str, boxes: Sequence[NormBox | None]) -> str:
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
            out.append(f"<phrase> {phrase}</phrase>" + (object_markup(box) if box is not None else ""))
        else:
            seg = part.lstrip() if k == 0 else part
            if k + 1 < len(parts):
                seg = seg.rstrip()
            out.append((" " + seg) if k == 0 and seg else seg)
    return "".join(out)


def build_request(task: str, image: Any, text: str | None = None, boxes: Any = None,
                  grounding_on: bool = True, quarter_turns: int = 0) -> TaskRequest:
    """Validate the user's inputs for ``task`` and build its prompts (one per batch row).

    ``quarter_turns`` rotates the image clockwise first (the image annotator lets users rotate
    it and gives the boxes in the rotated frame).
    """
    if task not in TASKS:
        raise InputError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.")
    img = load_image(image)
    if quarter_turns % 4:
        img = img.rotate(-90 * (quarter_turns % 4), expand=True)
    pixel_boxes = validate_boxes(parse_boxes(boxes), img.width, img.height)
    if TASKS[task].boxes == "none" and pixel_boxes:
        raise InputError(f"The task '{task}' takes no boxes.")
    norm = [normalise_box(b, img.width, img.height) for b in pixel_boxes]
    colour_by_row = False
    row_colours: tuple[str, ...] = ()
    if task == "caption":
        prompts = ["<grounding> An image of"]
    elif task == "detailed":
        prompts = ["<grounding> Describe this image in detail:"]
    elif task == "plain":
        prompts = ["An image of"]
    elif task == "ground":
        prompts = [f"<grounding><phrase> {p}</phrase>" for p in parse_phrases(text)]
        colour_by_row = True
    elif task == "refer":
        if not norm:
            raise InputError("No box: draw a box around the region to describe.")
        prompts = [f"<grounding>{render_bracketed('[It] is', [b])}" for b in norm]
        colour_by_row = True
        row_colours = drawn_box_colours(boxes)
    elif task == "ask":
        question = render_bracketed(clean_text(text, "The question"), norm)
        prompts = [f"<grounding> Question:{question} Answer:"]
    else:  # prompt
        body = render_bracketed(clean_text(text, "The prompt"), norm)
        prompts = [("<grounding>" if grounding_on else "") + body]
    return TaskRequest(task, img, tuple(prompts), colour_by_row, row_colours)


# --------------------------------------------------------------------------- generation settings


DECODING = ("greedy", "beam", "sample")


def _number(value: Any, name: str, lo: float, hi: float, integer: bool) -> float | int:
    try:
        x = float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a number, got {value!r}.") from e
    if not math.isfinite(x) or not lo <= x <= hi:
        raise InputError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}.")
    if integer:
        if x != int(x):
            raise InputError(f"{name} must be a whole number, got {value!r}.")
        return int(x)
    return x


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, validated from untrusted values by :meth:`from_user`."""

    max_new_tokens: int = 128
    decoding: str = "greedy"
    num_beams: int = 3
    temperature: float = 0.7
    top_p: float = 0.9
    no_repeat_ngram_size: int = 0

    @classmethod
    def from_user(cls, max_new_tokens: Any = 128, decoding: Any = "greedy", num_beams: Any = 3,
                  temperature: Any = 0.7, top_p: Any = 0.9, no_repeat_ngram_size: Any = 0) -> GenerationSettings:
        """Check every value's type and range; raise :class:`InputError` naming the first bad one."""
        if decoding not in DECODING:
            raise InputError(f"Decoding must be one of {', '.join(DECODING)}, got {decoding!r}.")
        return cls(
            max_new_tokens=_number(max_new_tokens, "Max new tokens", 1, MAX_NEW_TOKENS_CAP, True),
            decoding=decoding,
            num_beams=_number(num_beams, "Number of beams", 1, 8, True),
            temperature=_number(temperature, "Temperature", 0.05, 2.0, False),
            top_p=_number(top_p, "Top-p", 0.05, 1.0, False),
            no_repeat_ngram_size=_number(no_repeat_ngram_size, "No-repeat n-gram size", 0, 10, True),
        )

    @property
    def streams(self) -> bool:
        """Beam search returns only at the end; the other modes stream token by token."""
        return self.decoding != "beam"

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": 1, "do_sample": False}
        if self.decoding == "beam":
            kwargs["num_beams"] = self.num_beams
        elif self.decoding == "sample":
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs


# --------------------------------------------------------------------------- model holder


@dataclass
class LoadedModel:
    """A model and its processor, ready to run."""

    model: Any
    processor: Any
    device: str
    checkpoint: str
    is_tiny: bool
    note: str = ""  # why the tiny checkpoint is in use, for the UI's banner
    quantize: str | None = None  # "int8": the experimental int8 text decoder
    batcher: Any = field(init=False, repr=False)  # kosmos2.serving.Batcher: image prefix cache, batched users

    def __post_init__(self) -> None:
        from .serving import Batcher, Engine

        self.batcher = Batcher(Engine(self.model), max_batch_size=MAX_BATCH_SIZE)


def _dtype(name: str | None, device: str):
    import torch

    if not name:
        return torch.bfloat16 if device == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"KOSMOS2_DTYPE must be one of {', '.join(dtypes)}, got {name!r}")
    return dtypes[name]


class ModelHolder:
    """Loads the model once per process, on first use (thread-safe).

    ``checkpoint`` defaults to ``$KOSMOS2_CHECKPOINT`` or the hub model; ``"tiny"`` (or
    ``force_tiny``) means the built-in tiny random checkpoint, which is also the fallback when
    the checkpoint cannot be obtained (offline): :attr:`LoadedModel.is_tiny` then says so.
    ``quantize`` (default ``$KOSMOS2_QUANTIZE``) may be ``"int8"``: the experimental int8 text
    decoder on CPU (see ``kosmos2.quantize``). ``$KOSMOS2_PACK_WEIGHTS`` ``0``/``1`` turns the
    oneDNN weight layout off/on (default: on for float32 on an x86-64 CPU; see ``kosmos2.packing``).
    """

    def __init__(self, checkpoint: str | None = None, dtype: str | None = None, device: str | None = None,
                 force_tiny: bool = False, quantize: str | None = None) -> None:
        self.checkpoint = TINY_CHECKPOINT if force_tiny else (
            checkpoint or os.environ.get("KOSMOS2_CHECKPOINT") or DEFAULT_CHECKPOINT)
        self.dtype_name = dtype or os.environ.get("KOSMOS2_DTYPE") or None
        self.quantize = quantize or os.environ.get("KOSMOS2_QUANTIZE") or None
        if self.quantize not in (None, "int8"):
            raise ValueError(f"KOSMOS2_QUANTIZE must be 'int8' or unset, got {self.quantize!r}")
        pack = os.environ.get("KOSMOS2_PACK_WEIGHTS") or None
        if pack not in (None, "0", "1"):
            raise ValueError(f"KOSMOS2_PACK_WEIGHTS must be 0, 1 or unset, got {pack!r}")
        self.pack_weights = None if pack is None else pack == "1"  # None: kosmos2's default (float32 on x86 CPUs)
        self.device = device
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> LoadedModel | None:
        """The loaded model, or None before the first :meth:`get`."""
        return self._loaded

    def get(self) -> LoadedModel:
        """The model, loading it on the first call."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> LoadedModel:
        import torch

        from .hub import CheckpointError
        from .tiny import write_tiny_checkpoint

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        note = ""
        if self.checkpoint == TINY_CHECKPOINT:
            note = "the tiny checkpoint was requested"
        else:
            _progress(f"Loading KOSMOS-2 from {self.checkpoint} on {device} (first request; this can take a while)...")
            try:
                return self._from(self.checkpoint, device, is_tiny=False)
            except CheckpointError as e:
                note = f"could not get {self.checkpoint}: {e}"
                log.warning("Falling back to the built-in tiny checkpoint: %s", note)
        folder = Path(tempfile.mkdtemp(prefix="kosmos2-tiny-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _progress(f"Writing the built-in tiny checkpoint (random weights) to {folder}...")
        write_tiny_checkpoint(folder)
        return self._from(str(folder), device, is_tiny=True, note=note)

    def _from(self, path: str, device: str, is_tiny: bool, note: str = "") -> LoadedModel:
        from . import AutoProcessor, Kosmos2ForConditionalGeneration

        start = time.perf_counter()
        processor = AutoProcessor.from_pretrained(path)
        model = Kosmos2ForConditionalGeneration.from_pretrained(path, dtype=_dtype(self.dtype_name, device),
                                                                device=device, quantize=self.quantize,
                                                                pack_weights=self.pack_weights)
        _progress(f"Model ready in {time.perf_counter() - start:.1f} s.")
        return LoadedModel(model, processor, device, path if is_tiny else self.checkpoint, is_tiny, note,
                           self.quantize)


def _progress(message: str) -> None:
    print(f"[kosmos2] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- results and the runner


@dataclass
class Entity:
    """A located phrase: its text, span in the caption, boxes (normalised and pixels) and colour."""

    phrase: str
    span: tuple[int, int]
    boxes: list[NormBox]
    pixel_boxes: list[PixelBox]
    colour: str
    row: int


@dataclass
class TaskResult:
    """What a run produced so far (``done`` for the final one)."""

    task: str
    caption: str
    entities: list[Entity]
    raw: str  # the model's text with its tags, one line per batch row
    row_spans: list[tuple[int, int]]  # each batch row's span in ``caption``
    row_colours: list[str | None]
    image_size: tuple[int, int]
    done: bool = False
    new_tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Decoding speed in new tokens per second per batch row, after the first token (over the
        whole run when the first token's time is unknown, as with beam search)."""
        if self.first_token_s is not None and self.new_tokens > 1 and self.seconds > self.first_token_s:
            return (self.new_tokens - 1) / (self.seconds - self.first_token_s)
        return self.new_tokens / self.seconds if self.new_tokens and self.seconds > 0 else None

    def entities_json(self) -> list[dict[str, Any]]:
        """The entities as plain JSON-able dicts."""
        return [
            {**asdict(e), "span": list(e.span), "boxes": [list(b) for b in e.boxes],
             "pixel_boxes": [list(b) for b in e.pixel_boxes]}
            for e in self.entities
        ]

    def annotations(self) -> list[Annotation]:
        """What :func:`kosmos2.draw.annotate` draws for this result."""
        return [Annotation(e.phrase, e.colour, e.pixel_boxes) for e in self.entities]

    def timing_text(self) -> str:
        """A one-line summary of the run's speed."""
        if not self.done:
            return f"generating... {self.new_tokens} tokens"
        parts = [f"{self.new_tokens} new tokens in {self.seconds:.2f} s"]
        if self.first_token_s is not None:
            parts.append(f"first token after {self.first_token_s:.2f} s")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.1f} tokens/s")
        return " · ".join(parts)


def _after_image(text: str) -> str:
    return text.rsplit("</image>", 1)[-1].strip()


def build_result(request: TaskRequest, texts: Sequence[str], post_process: Callable[[str], tuple],
                 done: bool = False) -> TaskResult:
    """Merge the decoded rows of one batch into a single result (captions joined by newlines)."""
    width, height = request.image.size
    if not request.colour_by_row:
        row_colours: list[str | None] = [None] * len(texts)
    else:
        row_colours = list(request.row_colours) or entity_colours(len(texts))
    caption_parts: list[str] = []
    entities: list[Entity] = []
    row_spans = []
    offset = 0
    for row, text in enumerate(texts):
        caption, row_entities = post_process(text)
        pixel = grounding.entities_to_pixel_boxes(row_entities, width, height)
        for (phrase, (start, end), boxes), (_, _, pixel_boxes) in zip(row_entities, pixel):
            entities.append(Entity(phrase, (start + offset, end + offset), [tuple(b) for b in boxes],
                                   [tuple(b) for b in pixel_boxes], "", row))
        caption_parts.append(caption)
        row_spans.append((offset, offset + len(caption)))
        offset += len(caption) + 1
    colours = entity_colours(len(entities))
    for i, e in enumerate(entities):
        e.colour = row_colours[e.row] or colours[i]
    return TaskResult(request.task, "\n".join(caption_parts), entities,
                      "\n".join(_after_image(t) for t in texts), row_spans, row_colours, (width, height), done)


def run(loaded: LoadedModel, request: TaskRequest, settings: GenerationSettings,
        min_interval_s: float = 0.05) -> Iterator[TaskResult]:
    """Generate for ``request``, yielding partial results while tokens arrive and the final one last.

    The rows go to the model's batcher (decoded together with other users' waiting rows, the image
    prefix cached); partial results are yielded at most every ``min_interval_s`` seconds. A generation
    error is raised here. Closing the iterator early (a client that went away) drops the rows from
    their batch at its next step (beam search runs to its end).
    """
    from .serving import follow

    processor = loaded.processor
    n = len(request.prompts)
    batch = processor(text=list(request.prompts), images=[request.image] * n, return_tensors="pt", padding=True)
    prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]

    def decode(new_ids: list[list[int]]) -> list[str]:  # each row's prompt and new ids as text
        return processor.batch_decode([p + q for p, q in zip(prompt_ids, new_ids)], skip_special_tokens=True)

    start = time.perf_counter()
    first: float | None = None
    new_ids: list[list[int]] = [[] for _ in range(n)]
    last_yield = 0.0
    with closing(follow(loaded.batcher.submit_batch(**batch, **settings.generate_kwargs()))) as steps:
        for new_ids in steps:
            now = time.perf_counter()
            if not settings.streams:
                continue
            first = first if first is not None else now - start
            if now - last_yield >= min_interval_s:
                last_yield = now
                partial = build_result(request, decode(new_ids), processor.post_process_generation)
                partial.new_tokens, partial.seconds, partial.first_token_s = max(map(len, new_ids)), now - start, first
                yield partial
    seconds = time.perf_counter() - start
    result = build_result(request, decode(new_ids), processor.post_process_generation, done=True)
    result.new_tokens = max(len(q) for q in new_ids)
    result.seconds, result.first_token_s = seconds, first
    yield result


def run_to_end(loaded: LoadedModel, request: TaskRequest, settings: GenerationSettings) -> TaskResult:
    """Run without streaming updates; return the final result."""
    *_, result = run(loaded, request, settings, min_interval_s=math.inf)
    return result
