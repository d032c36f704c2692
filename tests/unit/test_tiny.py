"""The built-in tiny checkpoint and the checkpoint's tensor-name table."""

import json
import math

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from kosmos2.config import Kosmos2Config
from kosmos2.tiny import state_dict_shapes, write_tiny_checkpoint


def test_full_size_parameter_count_matches_the_seed():
    # 1,664,485,376 parameters (SPEC.md / the seed document); the tied lm_head counts once.
    shapes = state_dict_shapes(Kosmos2Config())
    total = sum(math.prod(s) for name, s in shapes.items() if name != "text_model.lm_head.weight")
    assert total == 1_664_485_376


def test_tiny_checkpoint_layout_and_ids(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    tok = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    assert [tok.id_to_token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    mask = tok.token_to_id("<mask>")
    assert tok.token_to_id("</doc>") == mask + 1
    assert tok.token_to_id("<grounding>") == mask + 11
    assert tok.token_to_id("<patch_index_0000>") == mask + 12
    assert tok.token_to_id("<patch_index_1023>") == tok.get_vocab_size() - 1
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == tok.get_vocab_size()
    weights = load_file(str(tiny_checkpoint / "model.safetensors"))
    expected = state_dict_shapes(Kosmos2Config.from_dict(config))
    del expected["text_model.lm_head.weight"]
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected


def test_tiny_checkpoint_is_deterministic(tmp_path):
    a = load_file(str(write_tiny_checkpoint(tmp_path / "a", seed=3) / "model.safetensors"))
    b = load_file(str(write_tiny_checkpoint(tmp_path / "b", seed=3) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
