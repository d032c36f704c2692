"""Float32 weights packed in oneDNN's layout (kosmos2.packing): same results as F.linear and the reference,
used only while the weight is unchanged, no gradients lost, and file pages given back after packing."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from kosmos2 import Kosmos2ForConditionalGeneration, packing
from kosmos2.layers import Linear
from reference_model import CHECKPOINTS, pixel_values, prompt_inputs, reference_model, token_id

pytestmark = pytest.mark.skipif(not packing.supported(), reason="needs an x86-64 CPU and PyTorch with oneDNN")


def _linear(in_features: int, out_features: int, bias: bool = True, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    layer = Linear(in_features, out_features, bias=bias)
    layer.requires_grad_(False)
    return layer


def _packed_layers(model: torch.nn.Module) -> list[Linear]:
    return [m for m in model.modules() if isinstance(m, Linear) and m.packed_weight() is not None]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 2048), (4, 2048), (71, 2048), (2, 3, 2048), (1, 1, 2048)])
def test_packed_product_matches_f_linear(shape, bias):
    layer = _linear(2048, 1536, bias)
    x = torch.randn(*shape)
    want = F.linear(x, layer.weight, layer.bias)
    layer.pack()
    got = layer(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_forward_uses_the_packed_copy():
    """Give the layer a packed copy of twice its weight: its output doubles, so the copy is what runs."""
    layer = _linear(64, 32, bias=False)
    x = torch.randn(3, 64)
    layer._packed = (torch.ops.mkldnn._reorder_linear_weight(2 * layer.weight, None), layer.weight.data_ptr(),
                     layer.weight._version)
    torch.testing.assert_close(layer(x), 2 * F.linear(x, layer.weight))


def test_a_changed_weight_drops_the_copy():
    layer = _linear(64, 32)
    x = torch.randn(2, 64)
    layer.pack()
    layer.weight.mul_(3)  # in place: the version moves
    assert layer.packed_weight() is None
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))

    layer.pack()
    layer.load_state_dict({"weight": torch.zeros(32, 64), "bias": torch.ones(32)})
    torch.testing.assert_close(layer(x), torch.ones(2, 32))

    layer.pack()
    layer.to(torch.bfloat16)
    assert layer._packed is None  # freed at once, not at the next float32 call
    assert layer.packed_weight() is None
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_gradients_flow_while_packed():
    layer = Linear(16, 8)
    layer.pack()
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    torch.testing.assert_close(layer.weight.grad, x.detach().sum(0).expand(8, 16))


def test_packing_a_bfloat16_weight_is_refused():
    with pytest.raises(ValueError, match="float32"):
        _linear(8, 4).to(torch.bfloat16).pack()


def test_unsupported_machine_is_a_clear_error_and_not_the_default(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(packing.platform, "machine", lambda: "arm64")
    with pytest.raises(ValueError, match="x86-64"):
        packing.pack_linears(_linear(8, 4))
    assert not _packed_layers(Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint))


def test_from_pretrained_packs_float32_by_default_only(tiny_checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and _packed_layers(model) == linears
    assert not _packed_layers(Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, pack_weights=False))
    assert not _packed_layers(Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16))
    assert packing.unpack_linears(model) == len(linears) and not _packed_layers(model)


def test_copies_compute_unpacked(tiny_checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    clone = copy.deepcopy(model)
    assert not _packed_layers(clone)
    ids = torch.tensor([[0, 10, 20, 30]])
    with torch.no_grad():
        torch.testing.assert_close(clone.text_model(input_ids=ids)[0], model.text_model(input_ids=ids)[0])


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_packed_and_plain_models_agree_with_each_other_and_the_reference(name, make_checkpoint):
    folder = make_checkpoint(name, **CHECKPOINTS[name])
    packed = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    plain = Kosmos2ForConditionalGeneration.from_pretrained(folder, pack_weights=False)
    assert _packed_layers(packed) and not _packed_layers(plain)
    inputs = prompt_inputs(folder, [[token_id(folder, "<grounding>"), 10, 20, 30, 40]])
    inputs["pixel_values"] = pixel_values(1, packed.config.vision_config.image_size, seed=5)
    ref = reference_model(folder)
    with torch.no_grad():
        torch.testing.assert_close(packed(**inputs).logits, plain(**inputs).logits, rtol=1e-5, atol=2e-4)
        want = ref.generate(**inputs, max_new_tokens=12, min_new_tokens=12)
    for model in (packed, plain):
        assert torch.equal(model.generate(**inputs, max_new_tokens=12, min_new_tokens=12), want)


def _rss_file_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file pages are released on Linux only")
def test_packing_gives_back_the_file_pages_of_a_mapped_weight(tmp_path):
    """A float32 weight read from a safetensors memory map is held once after packing, not twice."""
    weight = torch.randn(4096, 2048)  # 32 MiB
    save_file({"w": weight}, str(tmp_path / "w.safetensors"))
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        mapped = f.get_tensor("w")
    layer = Linear(2048, 4096, bias=False)
    layer.weight = torch.nn.Parameter(mapped, requires_grad=False)
    assert torch.equal(layer.weight, weight)  # every page now resident
    before = _rss_file_kib()
    assert packing.pack_linears(layer, release_mapped=True) == [layer]
    assert before - _rss_file_kib() > 24 * 1024
    assert torch.equal(layer.weight, weight)  # read back from the file
    x = torch.randn(2, 2048)
    torch.testing.assert_close(layer(x), F.linear(x, weight), rtol=1e-5, atol=1e-4)


def test_releasing_never_touches_a_weight_in_ordinary_memory():
    layer = _linear(2048, 4096)
    kept = layer.weight.clone()
    packing.pack_linears(layer, release_mapped=True)
    assert packing.release_file_pages([layer.weight]) == 0
    assert torch.equal(layer.weight, kept)
