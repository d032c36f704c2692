"""The CPU product each ``kosmos2.layers.Linear`` call picks by its row count: the intended kernel runs,
it matches ``F.linear``, gradients still flow, and whole models stay token-identical to the reference
for one row and for batches that take the oneDNN path."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from kosmos2 import Kosmos2ForConditionalGeneration, layers
from kosmos2.layers import Linear, cpu_kernel, onednn_supported
from reference_model import CHECKPOINTS, pixel_values, prompt_inputs, reference_model, token_id

# Skipped on a machine without oneDNN, but never in CI (``CI`` set), whose x86-64 machine must take that path.
needs_onednn = pytest.mark.skipif(not onednn_supported() and not os.environ.get("CI"),
                                  reason="needs an x86-64 CPU and PyTorch with oneDNN")


def _linear(in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.float32) -> Linear:
    torch.manual_seed(0)
    layer = Linear(in_features, out_features, bias=bias).to(dtype)
    layer.requires_grad_(False)
    return layer


@pytest.mark.parametrize("rows, dtype, onednn, want", [
    (1, torch.float32, True, "addmv"), (1, torch.bfloat16, True, "addmv"), (1, torch.float16, True, "linear"),
    (2, torch.float32, True, "linear"), (3, torch.float32, True, "linear"), (4, torch.float32, True, "onednn"),
    (256, torch.float32, True, "onednn"), (257, torch.float32, True, "linear"), (4, torch.bfloat16, True, "linear"),
    (4, torch.float32, False, "linear"), (1, torch.float32, False, "addmv"),
])
def test_kernel_by_row_count(rows, dtype, onednn, want):
    assert cpu_kernel(rows, dtype, onednn) == want


@pytest.fixture
def calls(monkeypatch):
    """Which kernels ran: torch.addmv / torch.mv, oneDNN's product, F.linear (wrapped, still computing)."""
    seen: list[str] = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen.append(name)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch, "addmv", spy("addmv", torch.addmv))
    monkeypatch.setattr(torch, "mv", spy("addmv", torch.mv))
    monkeypatch.setattr(layers.F, "linear", spy("linear", F.linear))
    if onednn_supported():
        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy("onednn", torch.ops.mkldnn._linear_pointwise))
    return seen


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 512), (1, 1, 512), (3, 512), (4, 512), (2, 3, 512), (71, 512), (300, 512)])
def test_each_row_count_runs_its_kernel_and_matches_f_linear(shape, bias, calls):
    layer = _linear(512, 384, bias)
    x = torch.randn(*shape)
    want = torch.nn.functional.linear(x, layer.weight, layer.bias)
    calls.clear()
    with torch.no_grad():
        got = layer(x)
    assert calls == [cpu_kernel(x.numel() // 512, torch.float32)]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_a_batch_of_four_runs_onednn(calls):
    layer = _linear(64, 32)
    with torch.no_grad():
        layer(torch.randn(4, 64))
    assert calls == ["onednn"]


def test_one_bfloat16_row_runs_addmv(calls):
    layer = _linear(256, 128, dtype=torch.bfloat16)
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        got = layer(x)
    assert calls == ["addmv"]
    torch.testing.assert_close(got, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=2e-2, atol=2e-2)


def test_gradients_flow_through_f_linear(calls):
    layer = _linear(64, 32).requires_grad_(True)
    x = torch.randn(4, 64, requires_grad=True)
    layer(x).sum().backward()
    assert calls == ["linear"]
    torch.testing.assert_close(x.grad, layer.weight.sum(dim=0).expand(4, -1))
    torch.testing.assert_close(layer.weight.grad, x.detach().sum(dim=0).expand(32, -1))


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_models_stay_token_identical_to_the_reference_for_one_row_and_four(name, make_checkpoint):
    folder = make_checkpoint(name, **CHECKPOINTS[name])
    model = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    ref = reference_model(folder)
    grounding = token_id(folder, "<grounding>")
    for texts in ([[grounding, 10, 20, 30, 40]],  # one row: addmv in every decode step
                  [[grounding, 10, 20, 30, 40], [grounding, 11], [12, 13, 14], [grounding, 15, 16]]):  # oneDNN
        inputs = prompt_inputs(folder, texts)
        inputs["pixel_values"] = pixel_values(len(texts), model.config.vision_config.image_size, seed=5)
        with torch.no_grad():
            want = ref.generate(**inputs, max_new_tokens=12, min_new_tokens=12)
        assert torch.equal(model.generate(**inputs, max_new_tokens=12, min_new_tokens=12), want)
