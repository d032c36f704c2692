"""Builders for the reference implementation (``transformers``), the test oracle: never used by ``kosmos2``."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from kosmos2.tiny import tiny_config

# The two tiny checkpoints of different shapes that parity tests run on (kwargs of write_tiny_checkpoint).
MODEL_B = dict(
    tied_name="lm_head",
    seed=1,
    config=tiny_config(
        0,
        text={"embed_dim": 48, "layers": 3, "attention_heads": 6, "ffn_dim": 96},
        vision={"hidden_size": 40, "num_hidden_layers": 1, "num_attention_heads": 5, "image_size": 42},
        latent_query_num=64,
    ),
)
CHECKPOINTS = {"model_a": {}, "model_b": MODEL_B}

EMBED_KEY = "text_model.model.embed_tokens.weight"
LM_HEAD_KEY = "text_model.lm_head.weight"


def reference_model(folder: Path, with_head: bool = True, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The reference ``Kosmos2ForConditionalGeneration`` (or ``Kosmos2Model``) with ``folder``'s weights.

    Built with ``load_state_dict`` from the full state dict (the tied matrix under both names), since the
    reference's ``from_pretrained`` cannot load files that store it only as ``lm_head`` (SPEC.md).
    """
    import transformers

    config = transformers.Kosmos2Config.from_pretrained(str(folder))
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    cls = transformers.Kosmos2ForConditionalGeneration if with_head else transformers.Kosmos2Model
    model = cls(config)
    state = load_file(str(folder / "model.safetensors"))
    tied = state.get(EMBED_KEY, state.get(LM_HEAD_KEY))
    state[EMBED_KEY] = tied
    if with_head:
        state[LM_HEAD_KEY] = tied
    else:
        state.pop(LM_HEAD_KEY, None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(name.endswith(("position_ids", "embed_positions.weights")) for name in missing), missing
    return model.eval()


def token_id(folder: Path, token: str) -> int:
    """The id of ``token`` in ``folder``'s tokenizer."""
    found = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(token)
    assert found is not None, token
    return found


def prompt_inputs(
    folder: Path, texts: list[list[int]], latent_query_num: int = 64
) -> dict[str, torch.Tensor]:
    """Hand-built, left-padded processor-style inputs: ``<s> <image> [slots] </image>`` + each row's text ids.

    The image slots take ids 4 … 4+latent_query_num-1 (SPEC.md); pads are id 1 with attention 0.
    """
    image, image_end = token_id(folder, "<image>"), token_id(folder, "</image>")
    rows = [[0, image, *range(4, 4 + latent_query_num), image_end, *t] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), 1, dtype=torch.long)
    attention = torch.zeros_like(ids)
    slots = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        pad = width - len(r)
        ids[i, pad:] = torch.tensor(r)
        attention[i, pad:] = 1
        slots[i, pad + 2 : pad + 2 + latent_query_num] = 1
    return {"input_ids": ids, "attention_mask": attention, "image_embeds_position_mask": slots}


def pixel_values(batch: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """Random normalised-looking pixel values (batch, 3, size, size)."""
    return torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
