"""Examples to model inputs and labels: what the processor builds for the prompt and its answer, then
``</s>``, with -100 where no loss is taken."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import UserError
from ..image_processing import ImageError, open_image, to_rgb
from ..processing import Kosmos2Processor
from .examples import Example

LOSS_ON = ("all", "answer")
IGNORE = -100


class ExampleError(UserError, ValueError):
    """An example the processor cannot turn into a training row (its text, its image, its length)."""


@dataclass(frozen=True)
class Row:
    """One encoded example: (T,) ids, image-slot mask and labels, and (3, S, S) pixels."""

    input_ids: list[int]
    image_mask: list[int]
    labels: list[int]
    pixel_values: torch.Tensor

    @property
    def targets(self) -> int:
        """How many next-token predictions carry a loss."""
        return sum(label != IGNORE for label in self.labels[1:])


class Encoder:
    """Encodes examples with a checkpoint's processor.

    ``loss_on="all"`` learns every token from ``</image>`` on (the original KOSMOS-2 training: not
    ``<s>``, ``<image>`` or the image slots); ``"answer"`` also leaves out the prompt, so that only the
    answer and ``</s>`` are learned. ``max_length`` bounds a row's tokens (the model's positions).
    """

    def __init__(
        self, processor: Kosmos2Processor, loss_on: str = "all", max_length: int = 2048, num_image_tokens: int = 64
    ) -> None:
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
        self.processor = processor
        self.loss_on = loss_on
        self.max_length = max_length
        self.num_image_tokens = num_image_tokens
        self.image_end = processor.tokenizer.convert_tokens_to_ids("</image>")
        self._prompts: dict[str, list[int]] = {}
        self._blank = Image.new("RGB", (1, 1))

    def _prompt_ids(self, prompt: str) -> list[int]:
        # The image's slots do not depend on its pixels, so one blank image gives every prompt's ids.
        if prompt not in self._prompts:
            out = self.processor(images=self._blank, text=prompt, num_image_tokens=self.num_image_tokens)
            self._prompts[prompt] = list(out["input_ids"])
        return self._prompts[prompt]

    def prompt_length(self, example: Example) -> int:
        """How many of the example's row's tokens are its prompt (``<s>``, the image and the prompt's text)."""
        return len(self._prompt_ids(example.prompt))

    def check(self, example: Example) -> None:
        """:class:`ExampleError` unless ``example`` encodes (its text, its length, its prompt's end) and its
        image file opens; the image is not decoded."""
        try:
            with Image.open(example.image) as image:
                image.size  # noqa: B018  # the header is read here
        except (OSError, Image.DecompressionBombError) as e:
            raise ExampleError(f"{example.where}: cannot read image {example.image} ({e})") from e
        self.encode(example, self._blank)

    def encode(self, example: Example, image: Image.Image | None = None) -> Row:
        """The row of ``example`` (its image read from its path unless given); :class:`ExampleError` when its
        prompt does not end on a token boundary or it is too long."""
        if image is None:
            try:
                image = to_rgb(open_image(example.image), as_displayed=True)
            except ImageError as e:
                raise ExampleError(f"{example.where}: {e}") from e
        out = self.processor(
            images=image,
            text=example.text,
            add_eos_token=True,
            num_image_tokens=self.num_image_tokens,
            return_tensors="pt",
        )
        ids, mask = out["input_ids"][0].tolist(), out["image_embeds_position_mask"][0].tolist()
        if len(ids) > self.max_length:
            raise ExampleError(f"{example.where}: {len(ids)} tokens, more than the model's {self.max_length}")
        if self.loss_on == "answer":
            prompt = self._prompt_ids(example.prompt)
            if ids[: len(prompt)] != prompt or len(prompt) >= len(ids) - 1:
                raise ExampleError(
                    f"{example.where}: the prompt {example.prompt!r} does not end where a token does "
                    "(or there is no answer after it)"
                )
            hidden = len(prompt)
        else:
            hidden = ids.index(self.image_end)
        labels = [IGNORE] * hidden + ids[hidden:]
        return Row(ids, mask, labels, out["pixel_values"][0])


def collate(rows: Sequence[Row], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded model inputs and labels for ``rows`` (pads: attention 0, label -100)."""
    length = max(len(r.input_ids) for r in rows)

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (length - len(values))

    return {
        "input_ids": torch.tensor([padded(r.input_ids, pad_token_id) for r in rows]),
        "attention_mask": torch.tensor([padded([1] * len(r.input_ids), 0) for r in rows]),
        "image_embeds_position_mask": torch.tensor([padded(r.image_mask, 0) for r in rows]),
        "labels": torch.tensor([padded(r.labels, IGNORE) for r in rows]),
        "pixel_values": torch.stack([r.pixel_values for r in rows]),
    }
