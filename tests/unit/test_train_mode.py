"""Training against the reference on two tiny checkpoints: the loss and every gradient, in eval mode and in
train mode with dropout (the same random stream gives the same masks), and gradient checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kosmos2 import Kosmos2ForConditionalGeneration
from reference_model import CHECKPOINTS, pixel_values, prompt_inputs, reference_model, token_id


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request, make_checkpoint) -> Path:
    return make_checkpoint(request.param, **CHECKPOINTS[request.param])


def _batch(folder: Path, image_size: int) -> dict[str, torch.Tensor]:
    g = token_id(folder, "<grounding>")
    inputs = prompt_inputs(folder, [[g, 10, 20, 30, 2], [g, 11, 2], [40, 50, 60, 70, 80, 90, 2]])
    inputs["pixel_values"] = pixel_values(3, image_size)
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return inputs


def _loss_and_grads(model: torch.nn.Module, inputs: dict, training: bool, seed: int = 0) -> tuple[float, dict]:
    model.train(training)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs)
    out.loss.backward()
    return out.loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _assert_same(got: tuple[float, dict], want: tuple[float, dict], atol: float) -> None:
    assert got[0] == pytest.approx(want[0], abs=1e-5)
    assert set(got[1]) == set(want[1]) and len(got[1]) > 50
    for name, grad in got[1].items():
        torch.testing.assert_close(grad, want[1][name], atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_loss_and_gradients_match_the_reference(checkpoint, training):
    ours = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    assert ours.config.text_config.dropout == 0.1 and ours.config.text_config.attention_dropout == 0.1
    ref = reference_model(checkpoint, attn_implementation="sdpa")
    inputs = _batch(checkpoint, ours.config.vision_config.image_size)
    _assert_same(_loss_and_grads(ours, inputs, training), _loss_and_grads(ref, inputs, training), atol=1e-5)


def test_dropout_is_on_in_training_only(checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    inputs = _batch(checkpoint, model.config.vision_config.image_size)
    eval_losses = {_loss_and_grads(model, inputs, False, seed)[0] for seed in (0, 1)}
    train_losses = {_loss_and_grads(model, inputs, True, seed)[0] for seed in (0, 1)}
    assert len(eval_losses) == 1 and len(train_losses) == 2
    assert _loss_and_grads(model, inputs, True, 3)[0] == _loss_and_grads(model, inputs, True, 3)[0]


def test_gradient_checkpointing_gives_the_same_gradients(checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    inputs = _batch(checkpoint, model.config.vision_config.image_size)
    plain = _loss_and_grads(model, inputs, True)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    _assert_same(_loss_and_grads(model, inputs, True), plain, atol=1e-6)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
