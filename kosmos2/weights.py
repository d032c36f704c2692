"""Reading a checkpoint's safetensors weights into a model built on the meta device."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .hub import CheckpointError

EMBED_KEY = "text_model.model.embed_tokens.weight"
LM_HEAD_KEY = "text_model.lm_head.weight"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers that some exporters store; the model recomputes them.
_BUFFER_SUFFIXES = (".position_ids", "embed_positions.weights")
_MAP_GROUP_BYTES = 128 * 2**20
_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: ``model.safetensors`` or the shards of its index."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"'{index}' is not a valid safetensors index: {e}") from e
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"The checkpoint in '{folder}' is incomplete: missing shard(s) {', '.join(missing)}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise CheckpointError(
        f"The checkpoint in '{folder}' is incomplete: no {SINGLE_FILE} or {INDEX_FILE} "
        "(pickle .bin weights are never loaded)"
    )


def read_weights(folder: Path, dtype: torch.dtype, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, floating-point ones converted to ``dtype`` as each is read.

    Tensors come one at a time from the memory-mapped files, and each file is mapped again for every
    group of about ``_MAP_GROUP_BYTES`` source bytes: the pages read for a converted group are unmapped
    before the next, so peak memory is about one copy of the weights in ``dtype`` plus one group. (A
    tensor already in ``dtype`` stays backed by the file's pages.) Stray buffer entries are skipped.
    """
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(folder):
        for group in _groups(path):
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in group:
                    t = f.get_tensor(name)
                    tensors[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    return tensors


def _groups(path: Path) -> list[list[str]]:
    """The tensor names of one safetensors file (buffers skipped) in groups of at most ``_MAP_GROUP_BYTES``
    (a larger tensor forms its own group)."""
    groups: list[list[str]] = [[]]
    size = 0
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for name in f.keys():
            if name.endswith(_BUFFER_SUFFIXES):
                continue
            view = f.get_slice(name)
            nbytes = math.prod(view.get_shape()) * _DTYPE_BYTES.get(view.get_dtype(), 8)
            if groups[-1] and size + nbytes > _MAP_GROUP_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += nbytes
    return [g for g in groups if g]


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Assign ``tensors`` to ``model``'s parameters, strictly: every name must match, and every shape.

    The tied embedding may be stored as ``embed_tokens`` or as ``lm_head``; both fill the embedding
    (and the model re-ties its head, if it has one).
    """
    tensors = dict(tensors)
    head = tensors.pop(LM_HEAD_KEY, None)
    if EMBED_KEY not in tensors and head is not None:
        tensors[EMBED_KEY] = head
    expected = {name: p for name, p in model.state_dict(keep_vars=True).items() if name != LM_HEAD_KEY}
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"The weights in '{source}' do not match the model: "
            f"missing {missing or 'none'}; unexpected {unexpected or 'none'}"
        )
    wrong = [
        f"{n} {tuple(tensors[n].shape)} != {tuple(p.shape)}" for n, p in expected.items() if tensors[n].shape != p.shape
    ]
    if wrong:
        raise CheckpointError(f"The weights in '{source}' have wrong shapes: {'; '.join(wrong)}")
    model.load_state_dict(tensors, strict=False, assign=True)
