"""The KOSMOS-2 processor: prompts (with optional boxes) and images -> model inputs, and back.

A prompt with an image becomes ``<s><image>`` + ``num_image_tokens`` image slots + ``</image>``
followed by the stripped prompt; the slots take the ids ``unk_id + 1`` onward and
``image_embeds_position_mask`` is 1 exactly there.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import grounding
from .batch import RETURN_TENSORS, BatchFeature, as_tensor_type
from .hub import PROCESSOR_FILES, CheckpointError, require_files, resolve_checkpoint
from .image_processing import ImageInput, Kosmos2ImageProcessor
from .lora import ADAPTER_CONFIG, read_adapter_config
from .tokenization import Kosmos2Tokenizer

_TRUNCATE = (True, "longest_first", "only_first")
_NO_TRUNCATE = (None, False, "do_not_truncate")


@dataclass(frozen=True)
class _Lengths:
    """Resolved padding and truncation settings."""

    pad: str | None  # None, "longest" or "max_length"
    pad_length: int | None
    multiple: int | None
    truncate_length: int | None


def _resolve_lengths(
    padding: bool | str,
    truncation: bool | str | None,
    max_length: int | None,
    pad_to_multiple_of: int | None,
    model_max_length: int | None,
    with_image: bool,
    verbose: bool,
) -> _Lengths:
    """Padding and truncation as ``transformers`` tokenizers resolve them. With an image, prompts
    are first tokenized unpadded (as the reference does), so a ``max_length`` alone always
    truncates there, and a batch is always padded to at least its longest row."""
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive int, got {max_length!r}.")
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
        raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}.")
    if truncation not in _TRUNCATE + _NO_TRUNCATE:
        raise ValueError(f"truncation must be one of {_TRUNCATE + _NO_TRUNCATE}, got {truncation!r}.")
    pads = {False: None, "do_not_pad": None, True: "longest", "longest": "longest", "max_length": "max_length"}
    if not isinstance(padding, (bool, str)) or padding not in pads:
        raise ValueError(f"padding must be one of {tuple(pads)}, got {padding!r}.")
    pad = pads[padding]
    implicit_truncation = max_length is not None and truncation is None and (pad is None or with_image)
    truncate = truncation in _TRUNCATE or implicit_truncation
    if verbose and pad == "longest" and max_length is not None and not truncate:
        warnings.warn(
            "max_length is ignored when padding=True and truncation is off; use padding='max_length'.", stacklevel=1
        )
    length = max_length if max_length is not None else model_max_length
    if pad == "max_length" and length is None:
        pad = None  # no limit known: nothing to pad to
    if truncation in _TRUNCATE and length is not None and pad and pad_to_multiple_of and length % pad_to_multiple_of:
        raise ValueError(
            f"Truncation and padding are both on but the truncation length ({length}) is not a multiple of "
            f"pad_to_multiple_of ({pad_to_multiple_of})."
        )
    return _Lengths(
        pad or ("longest" if with_image else None),
        length if pad == "max_length" else None,
        pad_to_multiple_of if pad else None,
        length if truncate else None,
    )


def _padded_length(lengths: list[int], settings: _Lengths, with_image: bool) -> int:
    if settings.pad is None:
        return 0
    target = max(lengths) if settings.pad_length is None else settings.pad_length  # set iff pad is "max_length"
    if settings.multiple:
        target = -(-target // settings.multiple) * settings.multiple
    # With an image a row longer than max_length sets the length for the whole batch.
    return max(target, *lengths) if with_image else target


def _boxes_per_prompt(bboxes: Any, count: int, batched: bool) -> list[Any]:
    if not batched:
        return [grounding.check_phrase_boxes(bboxes)]
    if bboxes is None:
        return [None] * count
    if not isinstance(bboxes, list) or len(bboxes) != count:
        raise ValueError("With a batch of prompts, bboxes must be None or a list with one entry per prompt.")
    return [grounding.check_phrase_boxes(b) for b in bboxes]


def _place_image_slots(ids: list[list[int]], start: int, first_id: int, count: int) -> list[list[int]]:
    """Write the image-slot ids ``first_id…`` at ``start`` of each row (in place); return the
    ``image_embeds_position_mask`` rows."""
    masks = []
    for row in ids:
        if len(row) < start + count + 1:
            raise ValueError(
                f"max_length cuts into the {count} image tokens: a prompt with an image needs at least "
                f"{start + count + 1} tokens."
            )
        row[start : start + count] = range(first_id, first_id + count)
        masks.append([0] * start + [1] * count + [0] * (len(row) - start - count))
    return masks


def _pad(seq: list[int], length: int, value: int, side: str) -> list[int]:
    fill = [value] * max(0, length - len(seq))
    return fill + seq if side == "left" else seq + fill


class Kosmos2Processor:
    """Prepares KOSMOS-2 inputs (``pixel_values``, ``input_ids``, ``attention_mask``,
    ``image_embeds_position_mask``) and decodes and post-processes generated ids."""

    def __init__(self, image_processor: Kosmos2ImageProcessor, tokenizer: Kosmos2Tokenizer):
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | Path, revision: str | None = None, local_files_only: bool | None = None
    ) -> Kosmos2Processor:
        """Load the processor of a checkpoint folder or hub repository (only the tokenizer and
        image-settings files are downloaded). An adapter folder without them gives its base model's."""
        folder = resolve_checkpoint(path_or_repo_id, (*PROCESSOR_FILES, ADAPTER_CONFIG), revision, local_files_only)
        if (folder / ADAPTER_CONFIG).is_file() and not (folder / "tokenizer.json").is_file():
            _, base = read_adapter_config(folder)
            if base:
                return cls.from_pretrained(base, None, local_files_only)  # the revision is the adapter's
        require_files(folder, ["tokenizer.json"], "The processor")
        if not any((folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json")):
            raise CheckpointError(
                f"The processor in '{folder}' is incomplete: missing preprocessor_config.json "
                "(or processor_config.json)"
            )
        return cls(Kosmos2ImageProcessor.from_folder(folder), Kosmos2Tokenizer.from_folder(folder))

    def _layout(self, text: str, with_image: bool, bboxes: Any, num_image_tokens: int, bos: bool) -> str:
        text = text.strip()
        if with_image:
            slots = " ".join(["<image>"] * (num_image_tokens + 1) + ["</image>"])
            text = f"{slots} {text}"
        text = grounding.insert_object_tags(text, bboxes)
        return self.tokenizer.bos_token + text if bos else text

    def __call__(
        self,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...] | None = None,
        text: str | Sequence[str] | None = None,
        bboxes: Any = None,
        num_image_tokens: int = 64,
        first_image_token_id: int | None = None,
        add_special_tokens: bool = True,
        add_eos_token: bool = False,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_length: bool = False,
        verbose: bool = True,
        return_tensors: str | None = None,
        padding_side: str = "left",
    ) -> BatchFeature:
        """Model inputs for one prompt (``text`` a string) or a batch (a list), each with its image.

        ``bboxes`` (per prompt: ``None`` or one entry per ``<phrase>``: ``None``, a box as 2 ints
        or 4 normalised floats, or a list of boxes) become ``<object>`` patch tokens after each
        ``</phrase>``. ``add_special_tokens`` puts ``<s>`` in front; ``add_eos_token`` also
        appends ``</s>``. Padding (``<pad>``, attention 0, on ``padding_side``) and truncation
        work as in the reference: as its tokenizer does for text only; with images a batch is
        always padded to at least its longest row and a ``max_length`` alone truncates. One
        prompt with an image is padded like a batch of one (the reference ignores padding
        there). ``return_tensors``: "pt", "np" or None (lists; a single prompt gives flat lists).
        """
        if images is None and text is None:
            raise ValueError("Give images, text, or both.")
        if return_tensors not in RETURN_TENSORS:
            raise ValueError(f"return_tensors must be one of {RETURN_TENSORS}, got {return_tensors!r}.")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        if not isinstance(num_image_tokens, int) or num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be a positive int, got {num_image_tokens!r}.")
        with_image = images is not None
        lengths = _resolve_lengths(
            padding, truncation, max_length, pad_to_multiple_of, self.tokenizer.model_max_length, with_image, verbose
        )

        batch = BatchFeature()
        image_list = None if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        if image_list is not None:
            batch.update(self.image_processor(image_list, return_tensors))
        if text is None:
            return batch

        batched = not isinstance(text, str)
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a non-empty list of strings.")
        if image_list is not None and len(image_list) != len(texts):
            raise ValueError(f"Got {len(texts)} prompts but {len(image_list)} images: give one image per prompt.")

        bos_in_text = add_special_tokens and not add_eos_token
        ids = [
            self.tokenizer.encode(
                self._layout(t, with_image, b, num_image_tokens, bos_in_text),
                add_special_tokens=add_special_tokens and add_eos_token,
                max_length=lengths.truncate_length,
            )
            for t, b in zip(texts, _boxes_per_prompt(bboxes, len(texts), batched))
        ]
        self._warn_if_too_long(ids, lengths, verbose)
        rows: dict[str, list[Any]] = {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}
        if with_image:
            first = self.tokenizer.unk_token_id + 1 if first_image_token_id is None else first_image_token_id
            if not isinstance(first, int) or first < 0 or first + num_image_tokens > len(self.tokenizer):
                raise ValueError(
                    f"first_image_token_id={first!r}: the {num_image_tokens} image slots must be ids "
                    f"inside the vocabulary (size {len(self.tokenizer)})."
                )
            start = int(add_special_tokens) + 1  # after <s> (if any) and <image>
            rows["image_embeds_position_mask"] = _place_image_slots(ids, start, first, num_image_tokens)
        unpadded = [len(row) for row in ids]
        target = _padded_length(unpadded, lengths, with_image)
        fills = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "image_embeds_position_mask": 0}
        for key, seqs in rows.items():
            rows[key] = [_pad(seq, target, fills[key], padding_side) for seq in seqs]
        if return_attention_mask is False:
            del rows["attention_mask"]
        if return_length:
            # As the reference: lengths before padding with an image, after padding without.
            rows["length"] = unpadded if with_image else [len(row) for row in rows["input_ids"]]
        for key, value in rows.items():
            if return_tensors is not None:
                batch[key] = as_tensor_type(value, return_tensors)
            else:
                batch[key] = value[0] if not batched and key != "length" else value
        return batch

    def _warn_if_too_long(self, ids: list[list[int]], lengths: _Lengths, verbose: bool) -> None:
        limit = self.tokenizer.model_max_length
        longest = max(len(row) for row in ids)
        if verbose and lengths.truncate_length is None and limit is not None and longest > limit:
            warnings.warn(f"A sequence has {longest} tokens, more than the model's maximum ({limit}).", stacklevel=1)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of one sequence of ids; ``skip_special_tokens`` drops ``<s> <pad> </s> <unk> <mask>`` only."""
        return self.tokenizer.decode(ids, skip_special_tokens)

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        """Texts of a batch of id sequences (a list of lists or a 2-D tensor)."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens)

    def post_process_generation(self, text: str, cleanup_and_extract: bool = True) -> Any:
        """The text after the last ``</image>``; with ``cleanup_and_extract``, ``(caption, entities)``
        with entities ``(phrase, (start, end), [normalised boxes])``."""
        return grounding.post_process_generation(text, cleanup_and_extract)


AutoProcessor = Kosmos2Processor
