"""A request's rows: each prompt split into its image prefix (the same for every prompt on the image) and
its own rest, and the key that names a prefix."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .. import generation
from ..generation import DecodingSettings


@dataclass(frozen=True)
class Row:
    """One prompt with its image, split at the end of the image slots."""

    pixel_values: torch.Tensor  # (3, S, S)
    prefix_ids: torch.Tensor  # (P,) <s> <image> and the slots
    prefix_mask: torch.Tensor  # (P,) image_embeds_position_mask of the prefix
    rest_ids: torch.Tensor  # (R,) </image> and the prompt, R >= 1
    key: str  # hash of the image and the prefix: the PrefixCache key


def prefix_key(pixel_values: torch.Tensor, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor) -> str:
    """SHA-256 of the preprocessed pixels (bytes, dtype, shape) and of the prefix ids and slot mask."""
    digest = hashlib.sha256()
    for t in (pixel_values, prefix_ids, prefix_mask):
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def split_row(pixel_values: torch.Tensor, input_ids: torch.Tensor, image_mask: torch.Tensor, pad_id: int) -> Row:
    """A :class:`Row` from one unpadded prompt: (3, S, S) pixels, (T,) ids and (T,) image slot mask."""
    if pixel_values.ndim != 3:
        raise ValueError(f"pixel_values of one row must have shape (3, size, size), got {tuple(pixel_values.shape)}")
    if input_ids.ndim != 1 or image_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids and image_embeds_position_mask of one row must be 1-D and of equal length, "
            f"got {tuple(input_ids.shape)} and {tuple(image_mask.shape)}"
        )
    slots = image_mask.nonzero()
    if slots.numel() == 0:
        raise ValueError("the prompt has no image slots (image_embeds_position_mask is all 0)")
    length = int(slots.max()) + 1
    if length >= input_ids.shape[0]:
        raise ValueError("the prompt has no tokens after its image slots (expected at least </image>)")
    prefix_ids = input_ids[:length]
    if bool((prefix_ids == pad_id).any()):
        raise ValueError(f"the image prefix contains the pad id {pad_id}: rows must be left-padded only")
    prefix_mask = image_mask[:length]
    return Row(
        pixel_values, prefix_ids, prefix_mask, input_ids[length:], prefix_key(pixel_values, prefix_ids, prefix_mask)
    )


def split_batch(
    pixel_values: torch.Tensor | None,
    input_ids: torch.Tensor | None,
    image_embeds_position_mask: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    pad_id: int,
) -> list[Row]:
    """The rows of a processor batch (left-padded (B, T) tensors and (B, 3, S, S) pixels)."""
    input_ids, image_embeds_position_mask = generation.check_prompt_shapes(
        input_ids, image_embeds_position_mask, attention_mask
    )
    if pixel_values is None or pixel_values.ndim != 4 or pixel_values.shape[0] != input_ids.shape[0]:
        shape = None if pixel_values is None else tuple(pixel_values.shape)
        raise ValueError(f"pixel_values of shape ({input_ids.shape[0]}, 3, size, size) are required, got {shape}")
    if attention_mask is None:
        attention_mask = input_ids.ne(pad_id).long()
    rows = []
    for pixels, ids, slots, keep in zip(pixel_values, input_ids, image_embeds_position_mask, attention_mask):
        keep = keep.bool()
        start = int(keep.long().argmax())
        if not bool(keep[start:].all()):
            raise ValueError("attention_mask must be 0s then 1s per row (left padding only)")
        rows.append(split_row(pixels, ids[start:], slots[start:], pad_id))
    return rows


def check_one_sequence(settings: DecodingSettings) -> None:
    """Serving gives one sequence per row: ``num_return_sequences`` is ``model.generate``'s."""
    if settings.num_return_sequences != 1:
        raise ValueError(
            "num_return_sequences must be 1 when serving (one sequence per row); "
            "use model.generate for several sequences per prompt"
        )
