"""LoRA adapters: what they compute, merging, and peft's file layout both ways (peft on the reference model
reads what we save, and we read what peft saves)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kosmos2 import Kosmos2ForConditionalGeneration
from kosmos2.lora import (
    AdapterError,
    LoraLinear,
    LoraSpec,
    add_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    save_adapter,
)
from reference_model import pixel_values, prompt_inputs, reference_model, token_id

SPEC = LoraSpec(r=4, lora_alpha=8, lora_dropout=0.0)


@pytest.fixture()
def inputs(tiny_checkpoint: Path) -> dict[str, torch.Tensor]:
    g = token_id(tiny_checkpoint, "<grounding>")
    batch = prompt_inputs(tiny_checkpoint, [[g, 10, 20], [30, 40, 50, 60]])
    batch["pixel_values"] = pixel_values(2, 56)
    return batch


def _randomise(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


def _logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_the_default_targets_are_the_decoders_projections_and_a_fresh_adapter_changes_nothing(tiny_checkpoint, inputs):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    before = _logits(model, inputs)
    names = add_lora(model, SPEC)
    layers = model.config.text_config.layers
    assert len(names) == 6 * layers  # q, k, v, out, fc1, fc2 per block
    assert all(n.startswith("text_model.model.layers.") for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    torch.testing.assert_close(_logits(model, inputs), before, atol=0, rtol=0)


def test_the_update_is_b_a_x_times_alpha_over_r_and_merging_keeps_the_outputs(tiny_checkpoint, inputs):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    add_lora(model, SPEC)
    _randomise(model)
    layer = model.text_model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoraLinear)
    x = torch.randn(3, layer.base_layer.in_features)
    want = layer.base_layer(x) + x @ layer.lora_A.weight.T @ layer.lora_B.weight.T * (8 / 4)
    torch.testing.assert_close(layer.eval()(x), want)
    unmerged = _logits(model, inputs)
    merge_lora(model)
    assert not lora_layers(model)
    torch.testing.assert_close(_logits(model, inputs), unmerged, atol=1e-5, rtol=1e-5)


def test_peft_on_the_reference_model_reads_our_adapter(tiny_checkpoint, inputs, tmp_path):
    from peft import PeftModel

    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    add_lora(model, SPEC)
    _randomise(model)
    save_adapter(model, SPEC, tmp_path, str(tiny_checkpoint))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(tiny_checkpoint)
    peft_model = PeftModel.from_pretrained(reference_model(tiny_checkpoint), str(tmp_path))
    ours = _logits(model, inputs)
    torch.testing.assert_close(_logits(peft_model, inputs), ours, atol=2e-4, rtol=0)
    assert (ours - _logits(reference_model(tiny_checkpoint), inputs)).abs().max() > 1e-2  # the adapter matters
    merged = Kosmos2ForConditionalGeneration.from_pretrained(tmp_path)  # an adapter folder loads merged
    torch.testing.assert_close(_logits(merged, inputs), ours, atol=1e-5, rtol=1e-5)


def test_we_read_an_adapter_peft_saved(tiny_checkpoint, inputs, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "fc2"], init_lora_weights=False)
    peft_model = get_peft_model(reference_model(tiny_checkpoint), config)
    peft_model.save_pretrained(str(tmp_path))
    ours = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    spec = load_adapter(ours, tmp_path)
    assert (spec.r, spec.lora_alpha) == (2, 6)
    # peft matches names by suffix: the vision tower's and the projection's q_proj and fc2 too
    assert any(n.startswith("vision_model.") for n in lora_layers(ours))
    torch.testing.assert_close(_logits(ours, inputs), _logits(peft_model, inputs), atol=2e-4, rtol=0)


def test_bad_specs_and_files_are_refused(tiny_checkpoint, tmp_path):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    with pytest.raises(AdapterError, match="no linear layer"):
        add_lora(model, LoraSpec(target_modules=r"nothing\.here"))
    with pytest.raises(AdapterError, match="tied"):  # the LM head is the embedding matrix
        add_lora(model, LoraSpec(target_modules=r"text_model\.lm_head"))
    with pytest.raises(AdapterError, match="alpha must be positive"):
        LoraSpec(lora_alpha=0)
    with pytest.raises(AdapterError, match="rank must be at least 1"):
        LoraSpec(r=0)
    with pytest.raises(AdapterError, match="not a regular expression"):
        LoraSpec(target_modules="(")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "use_dora": True}))
    with pytest.raises(AdapterError, match="use_dora"):
        load_adapter(model, tmp_path)
