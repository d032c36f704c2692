"""A thin wrapper around the checkpoint's ``tokenizer.json`` (the ``tokenizers`` library).

The stored pipeline is used as it is; the KOSMOS-2 tags and patch-index tokens are added when
the file lacks them (in the reference's order, so the ids are the same either way).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from tokenizers import AddedToken, Tokenizer

from .grounding import NUM_PATCH_INDEX_TOKENS, TAG_TOKENS, patch_index_token

# XLM-RoBERTa's special tokens, used when the checkpoint does not name them.
DEFAULT_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_text(value: Any) -> str:
    return value["content"] if isinstance(value, dict) else value


class Kosmos2Tokenizer:
    """Text <-> ids with the checkpoint's tokenizer; ``decode(skip_special_tokens=True)`` drops
    only ``<s> <pad> </s> <unk> <mask>`` and keeps the grounding tags."""

    def __init__(
        self, tokenizer: Tokenizer, special_tokens: dict[str, str] | None = None, model_max_length: int | None = None
    ):
        self.backend = tokenizer
        # Truncation and padding are per call here, never settings stored in the file.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.special_tokens = {**DEFAULT_SPECIAL_TOKENS, **(special_tokens or {})}
        self.model_max_length = model_max_length
        self._special_ids = {self.convert_tokens_to_ids(t) for t in self.special_tokens.values()}
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        names = list(TAG_TOKENS) + [patch_index_token(i) for i in range(NUM_PATCH_INDEX_TOKENS)]
        tokenizer.add_tokens(
            [AddedToken(n, lstrip=True, rstrip=False, normalized=False, special=False) for n in names if n not in vocab]
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> Kosmos2Tokenizer:
        """Load ``tokenizer.json``; special tokens and ``model_max_length`` come from
        ``tokenizer_config.json`` / ``special_tokens_map.json`` when present."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"No tokenizer.json in '{folder}'.")
        config = _read_json(folder / "tokenizer_config.json")
        special_map = _read_json(folder / "special_tokens_map.json")
        special = {
            name: _token_text(source[name])
            for name in DEFAULT_SPECIAL_TOKENS
            for source in (config, special_map)  # the map wins, as in transformers
            if source.get(name) is not None
        }
        max_length = config.get("model_max_length")
        # transformers writes a huge sentinel (~1e30) when there is no limit.
        model_max_length = int(max_length) if isinstance(max_length, (int, float)) and max_length < 1e18 else None
        return cls(Tokenizer.from_file(str(path)), special, model_max_length)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _special_id(self, name: str) -> int:
        return self.convert_tokens_to_ids(self.special_tokens[name])

    @property
    def bos_token(self) -> str:
        return self.special_tokens["bos_token"]

    @property
    def bos_token_id(self) -> int:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int:
        return self._special_id("pad_token")

    @property
    def unk_token_id(self) -> int:
        return self._special_id("unk_token")

    @overload
    def convert_tokens_to_ids(self, tokens: str) -> int: ...  # type: ignore[overload-overlap]  # a str picks this first
    @overload
    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]: ...
    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """The id of a token (or a list of ids); unknown tokens raise ``ValueError``."""
        if not isinstance(tokens, str):
            return [self.convert_tokens_to_ids(t) for t in tokens]
        index = self.backend.token_to_id(tokens)
        if index is None:
            raise ValueError(f"Token {tokens!r} is not in the vocabulary.")
        return index

    @overload
    def convert_ids_to_tokens(self, ids: int) -> str: ...
    @overload
    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...
    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """The token of an id (or a list of tokens)."""
        if not isinstance(ids, int):
            return [self.convert_ids_to_tokens(i) for i in ids]
        token = self.backend.id_to_token(ids)
        if token is None:
            raise ValueError(f"Id {ids} is outside the vocabulary (size {len(self)}).")
        return token

    def encode(self, text: str, add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """Token ids of ``text``, with the tokenizer's ``<s> … </s>`` when ``add_special_tokens``.

        With ``max_length`` the text's tokens are cut on the right so that the result, special
        tokens included, fits.
        """
        encoding = self.backend.encode(text, add_special_tokens=False)
        if max_length is not None:
            room = max_length - (self.backend.num_special_tokens_to_add(False) if add_special_tokens else 0)
            if room < 0:
                raise ValueError(f"max_length={max_length} leaves no room for the special tokens.")
            encoding.truncate(room)
        return self.backend.post_process(encoding, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (a list, or a 1-D tensor/array)."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.backend.decode(ids, skip_special_tokens=False)

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        """``decode`` for each sequence of a batch (a list of lists, or a 2-D tensor/array)."""
        return [self.decode(seq, skip_special_tokens) for seq in sequences]
