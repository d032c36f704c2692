"""What a run gives: the :class:`TaskResult`, built from the decoded rows of one batch, each parsed once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .. import grounding
from ..detection import Candidate
from ..grounding import Box, PixelBox
from .draw import Annotation, entity_colours, format_score
from .request import TaskRequest


class DetectRun(Protocol):
    """What a detect result keeps of its run, to be filtered again without the model
    (:class:`kosmos2.demo.detect.Detection` is one): its phrases and every candidate box per phrase."""

    @property
    def phrases(self) -> tuple[str, ...]: ...

    @property
    def candidates(self) -> tuple[tuple[Candidate, ...], ...]: ...


@dataclass
class ResultEntity:
    """A located phrase of a result: its text, span in the caption, boxes (normalised and pixels),
    colour, batch row, and each box's score (the model's probability of the box; None for a box
    given in the prompt)."""

    phrase: str
    span: tuple[int, int]
    boxes: list[Box]
    pixel_boxes: list[PixelBox]
    colour: str
    row: int
    scores: list[float | None] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """The best score of the entity's boxes (None when none was generated)."""
        return max((s for s in self.scores if s is not None), default=None)


@dataclass
class TaskResult:
    """What a run produced so far (``done`` for the final one)."""

    task: str
    caption: str
    entities: list[ResultEntity]
    raw: str  # the model's text with its tags, one line per batch row
    row_spans: list[tuple[int, int]]  # each batch row's span in ``caption``
    row_colours: list[str | None]
    image_size: tuple[int, int]
    done: bool = False
    colour_row_text: bool = False  # each row's text in its row colour (see Task.colour_row_text)
    new_tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None
    detection: DetectRun | None = None  # a detect run's candidates, to re-filter without the model
    shown_from: int = 0  # where the text the page shows begins in ``caption`` (an answer after its question)
    box_numbers: dict[int, int] = field(default_factory=dict)  # entity index -> the number of the drawn box it is
    threshold: float | None = None  # detect: the box threshold it was filtered with
    refiltered: bool = False  # detect: filtered again from the candidates, without the model

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
            {
                **asdict(e),
                "span": list(e.span),
                "boxes": [list(b) for b in e.boxes],
                "pixel_boxes": [list(b) for b in e.pixel_boxes],
                "score": e.score,
            }
            for e in self.entities
        ]

    def label(self, i: int) -> str:
        """Entity ``i``'s label on the image: its phrase, after its box's number for a drawn box
        (``"Box 1 · this animal"``)."""
        phrase = self.entities[i].phrase
        return f"Box {self.box_numbers[i]} · {phrase}" if i in self.box_numbers else phrase

    def annotations(self) -> list[Annotation]:
        """What :func:`kosmos2.demo.draw.annotate` draws for this result."""
        return [Annotation(self.label(i), e.colour, e.pixel_boxes, e.scores) for i, e in enumerate(self.entities)]

    def timing_text(self) -> str:
        """A one-line summary of the run's speed."""
        if self.detection is not None:
            candidates = [c for per_phrase in self.detection.candidates for c in per_phrase]
            boxes = sum(len(e.boxes) for e in self.entities)
            text = f"{count(boxes, 'box', 'boxes')} kept of {count(len(candidates), 'candidate', 'candidates')}"
            text += (
                f", re-filtered without the model (which took {self.seconds:.2f} s)"
                if self.refiltered
                else f" in {self.seconds:.2f} s"
            )
            if not boxes and candidates and self.threshold is not None:
                best = max(c.score for c in candidates)
                text += (
                    f" · the best scores {format_score(best)}, under the box threshold {self.threshold:g}: "
                    "lower it to see boxes"
                )
            return text
        if not self.done:
            return f"generating... {self.new_tokens} tokens"
        parts = [f"{self.new_tokens} new tokens in {self.seconds:.2f} s"]
        if self.first_token_s is not None:
            parts.append(f"first token after {self.first_token_s:.2f} s")
        if self.tokens_per_s is not None:  # (what it measures: see tokens_per_s)
            after_first = self.first_token_s is not None and self.new_tokens > 1
            parts.append(f"{self.tokens_per_s:.1f} tokens/s" + (" after the first" if after_first else ""))
        return " · ".join(parts)


def count(n: int, one: str, many: str) -> str:
    """``n`` and its noun in the singular or the plural: ``1 box``, ``2 boxes``."""
    return f"{n} {one if n == 1 else many}"


@dataclass(frozen=True)
class ParsedRow:
    """One decoded batch row, parsed once: the text after its image (``raw``), its caption, its entities
    (phrase, span in the caption, normalised boxes), their boxes in pixels and each box's score (None for a
    box given in the prompt, or when no scores were given)."""

    raw: str
    caption: str
    entities: list[grounding.Entity]
    pixel_boxes: list[list[PixelBox]]
    scores: list[list[float | None]]


def parse_row(text: str, size: tuple[int, int], patch_logprobs: Sequence[float | None] | None = None) -> ParsedRow:
    """Parse a decoded row (its whole text; only the part after the last ``</image>`` counts) for an image
    of ``size`` (width, height); ``patch_logprobs`` (see :func:`kosmos2.grounding.location_logprobs`) give
    the boxes their scores."""
    after = grounding.post_process_generation(text, cleanup_and_extract=False)
    caption, entities, scores = grounding.scored_entities(after, patch_logprobs)
    pixel = grounding.entities_to_pixel_boxes(entities, *size)
    return ParsedRow(after.strip(), caption, entities, [list(boxes) for _, _, boxes in pixel], scores)


def build_result(
    request: TaskRequest,
    texts: Sequence[str],
    done: bool = False,
    patch_logprobs: Sequence[Sequence[float | None]] | None = None,
) -> TaskResult:
    """Merge the decoded rows of one batch into a single result (captions joined by newlines); see
    :func:`parse_row` for ``patch_logprobs`` (per row)."""
    size = request.image.size
    return merge_rows(
        request,
        [parse_row(t, size, None if patch_logprobs is None else patch_logprobs[row]) for row, t in enumerate(texts)],
        done,
    )


def merge_rows(request: TaskRequest, rows: Sequence[ParsedRow], done: bool = False) -> TaskResult:
    """The result of a batch's parsed rows (see :func:`build_result`)."""
    if not request.colour_by_row:
        row_colours: list[str | None] = [None] * len(rows)
    else:
        row_colours = [*(request.box_colours or entity_colours(len(rows)))]
    entities: list[ResultEntity] = []
    row_spans = []
    offset = 0
    for row, parsed in enumerate(rows):
        for (phrase, (start, end), boxes), pixel_boxes, box_scores in zip(
            parsed.entities, parsed.pixel_boxes, parsed.scores
        ):
            entities.append(
                ResultEntity(
                    phrase, (start + offset, end + offset), list(boxes), list(pixel_boxes), "", row, list(box_scores)
                )
            )
        row_spans.append((offset, offset + len(parsed.caption)))
        offset += len(parsed.caption) + 1
    # one row: its first entities are the [bracketed] words of the prompt, the i-th bound to the i-th box
    bound = [] if request.colour_by_row else list(request.box_colours[: len(entities)])
    colours = bound + entity_colours(len(entities) - len(bound))
    for i, e in enumerate(entities):
        e.colour = row_colours[e.row] or colours[i]
    caption = "\n".join(r.caption for r in rows)
    if request.colour_by_row:  # a region's description: its row's first phrase ("It") is the row's box
        firsts = [next((i for i, e in enumerate(entities) if e.row == r), None) for r in range(request.drawn_boxes)]
        numbers = {i: r + 1 for r, i in enumerate(firsts) if i is not None}
    else:  # the [bracketed] words, in order
        numbers = {i: i + 1 for i in range(min(request.drawn_boxes, len(entities)))}
    marker = caption.find(request.answer_after) if request.answer_after else -1
    shown_from = marker + len(request.answer_after) if marker >= 0 else 0
    width, height = request.image.size
    return TaskResult(
        request.task,
        caption,
        entities,
        "\n".join(r.raw for r in rows),
        row_spans,
        row_colours,
        (width, height),
        done,
        colour_row_text=request.colour_row_text,
        shown_from=len(caption) - len(caption[shown_from:].lstrip()),
        box_numbers=numbers,
    )
