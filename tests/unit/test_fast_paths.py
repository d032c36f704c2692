"""The fast decode paths (no mask without padding, causal SDPA, in-place ids), grouped weight reading and
the experimental int8 mode: same results as the plain path and the reference (int8: within its error)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import kosmos2.weights
from kosmos2 import Kosmos2ForConditionalGeneration
from kosmos2.attention import attend
from kosmos2.quantize import Int8Linear, quantize_int8
from reference_model import CHECKPOINTS, pixel_values, prompt_inputs, reference_model, token_id

NEW = 16


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def pair(request, make_checkpoint):
    """(checkpoint folder, our model, the reference, one unpadded prompt with its image)."""
    folder = make_checkpoint(request.param, **CHECKPOINTS[request.param])
    ours = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    g = token_id(folder, "<grounding>")
    inputs = prompt_inputs(folder, [[g, 10, 20, 30, 40]])
    inputs["pixel_values"] = pixel_values(1, ours.config.vision_config.image_size, seed=3)
    return folder, ours, reference_model(folder), inputs


def test_greedy_batch_one_is_token_identical_to_the_reference(pair):
    _, ours, ref, inputs = pair
    got = ours.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW)
    with torch.no_grad():
        want = ref.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW)
    assert torch.equal(got, want), (got[:, -NEW:], want[:, -NEW:])


def test_unmasked_prompt_and_steps_match_the_explicit_mask_path(pair):
    """Without padding the decoder skips the mask (causal SDPA / nothing); a head mask of ones forces the
    explicit additive mask, which must give the same hidden states, for the prompt and each cached step."""
    _, ours, _, inputs = pair
    decoder = ours.text_model.model
    cfg = ours.config.text_config
    ids = torch.cat([inputs["input_ids"], torch.tensor([[10, 11, 12]])], dim=1)
    image_mask = torch.nn.functional.pad(inputs["image_embeds_position_mask"], (0, 3))
    with torch.no_grad():
        image = ours.get_image_features(inputs["pixel_values"])[0]
        ones = torch.ones(cfg.layers, cfg.attention_heads)
        explicit = decoder(input_ids=ids, image_embeds=image, image_embeds_position_mask=image_mask,
                           head_mask=ones).last_hidden_state
        fast = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), image_embeds=image,
                       image_embeds_position_mask=image_mask).last_hidden_state
        torch.testing.assert_close(fast, explicit)
        prompt_len = ids.shape[1] - 3
        out = decoder(input_ids=ids[:, :prompt_len], image_embeds=image,
                      image_embeds_position_mask=image_mask[:, :prompt_len], use_cache=True)
        steps = [out.last_hidden_state[:, -1]]
        for t in range(prompt_len, ids.shape[1]):
            out = decoder(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.last_hidden_state[:, -1])
    torch.testing.assert_close(torch.stack(steps, dim=1), explicit[:, prompt_len - 1 :])


def test_causal_attention_equals_the_additive_causal_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    additive = torch.full((5, 5), torch.finfo(torch.float32).min).triu(1)
    want, _ = attend(q, k, v, additive)
    fast, _ = attend(q, k, v, causal=True)
    explicit, weights = attend(q, k, v, causal=True, need_weights=True)
    torch.testing.assert_close(fast, want)
    torch.testing.assert_close(explicit, want)
    assert torch.equal(weights[..., 0, 1:], torch.zeros_like(weights[..., 0, 1:]))
    with pytest.raises(ValueError, match="causal"):
        attend(q, k, v, additive, causal=True)


def test_weights_are_read_in_groups_that_are_mapped_one_at_a_time(tiny_checkpoint, monkeypatch):
    """A small group size forces many mappings; the tensors (converted per group) equal the stored ones."""
    real_open = kosmos2.weights.safe_open
    opened = []

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(kosmos2.weights, "safe_open", counting_open)
    monkeypatch.setattr(kosmos2.weights, "_MAP_GROUP_BYTES", 4096)
    got = kosmos2.weights.read_weights(tiny_checkpoint, torch.bfloat16, "cpu")
    stored = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert len(opened) > 10
    assert got.keys() == stored.keys()
    for name, value in stored.items():
        assert torch.equal(got[name], value.to(torch.bfloat16)), name


def test_int8_linear_error_is_within_the_quantisation_bound():
    """Per-row weight scale s_w = max|w|/127, input step s_x = range(x ∪ 0)/127 (7-bit activations):
    each output is off by at most (s_w/2)·Σ|x| + (s_x/2)·Σ|w| + (s_w/2)(s_x/2)·n."""
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 64, generator=g) * 0.1)
    x = torch.randn(5, 64, generator=g)
    got = Int8Linear(linear)(x)
    with torch.no_grad():
        want = linear(x)
    s_w = linear.weight.abs().amax(dim=1) / 127  # (48,)
    s_x = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 127
    bound = (s_w / 2) * x.abs().sum(dim=1, keepdim=True) + (s_x / 2) * linear.weight.abs().sum(dim=1) \
        + (s_w / 2) * (s_x / 2) * 64
    assert got.shape == want.shape and got.dtype == torch.float32
    assert bool(((got - want).abs() <= bound * 1.01 + 1e-6).all())
    assert not torch.equal(got, want)  # it really is quantised
    assert Int8Linear(linear)(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_int8_mode_replaces_the_decoder_linears_and_generates(tiny_checkpoint):
    plain = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    int8 = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, quantize="int8")
    assert not any(isinstance(m, nn.Linear) for m in int8.text_model.modules())
    assert isinstance(int8.text_model.lm_head, Int8Linear)
    assert sum(isinstance(m, Int8Linear) for m in int8.text_model.modules()) == 6 * 2 + 1
    assert any(isinstance(m, nn.Linear) for m in int8.vision_model.modules())  # the image side is untouched
    g = token_id(tiny_checkpoint, "<grounding>")
    inputs = prompt_inputs(tiny_checkpoint, [[g, 10, 20]])
    inputs["pixel_values"] = pixel_values(1, 56)
    with torch.no_grad():
        want, got = plain(**inputs).logits, int8(**inputs).logits
    cosine = torch.nn.functional.cosine_similarity(got.flatten(0, 1), want.flatten(0, 1), dim=-1)
    assert bool((cosine > 0.99).all()), cosine.min()
    ids = int8.generate(**inputs, max_new_tokens=4, min_new_tokens=4)
    assert ids.shape == (1, inputs["input_ids"].shape[1] + 4)
    bf16 = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16, quantize="int8")
    with torch.no_grad():
        logits = bf16(**{**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}).logits
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())


def test_int8_mode_errors(tiny_checkpoint):
    with pytest.raises(ValueError, match="quantize"):
        Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, quantize="int4")
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, quantize="int8")
    with pytest.raises(ValueError, match="already"):
        quantize_int8(model)


def test_generate_returns_prompt_and_new_ids_when_every_row_stops_early(tiny_checkpoint):
    """With in-place ids, an early stop must return exactly the tokens so far (no pad tail), as the reference."""
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    g = token_id(tiny_checkpoint, "<grounding>")
    inputs = prompt_inputs(tiny_checkpoint, [[g, 10, 20]])
    inputs["pixel_values"] = pixel_values(1, 56)
    stop = int(model.generate(**inputs, max_new_tokens=3)[0, -2])  # a token greedy decoding reaches early
    got = model.generate(**inputs, max_new_tokens=10, eos_token_id=stop)
    with torch.no_grad():
        want = reference_model(tiny_checkpoint).generate(**inputs, max_new_tokens=10, eos_token_id=stop)
    assert got.shape[1] < inputs["input_ids"].shape[1] + 10
    assert torch.equal(got, want)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 64), (1, 64), (3, 1, 64), (1, 5, 64)])
def test_linear_single_bfloat16_row_matches_f_linear(shape, bias):
    """The bfloat16 one-row kernel (addmv) gives what F.linear gives; other inputs take F.linear itself."""
    from kosmos2.layers import Linear

    torch.manual_seed(0)
    layer = Linear(64, 96, bias=bias).to(torch.bfloat16)
    x = torch.randn(shape).to(torch.bfloat16)
    want = torch.nn.functional.linear(x, layer.weight, layer.bias)
    got = layer(x)
    assert got.shape == want.shape == (*shape[:-1], 96)
    torch.testing.assert_close(got, want)
    if x.numel() == 64:  # the addmv path was taken
        row = x.reshape(64)
        direct = torch.addmv(layer.bias, layer.weight, row) if bias else torch.mv(layer.weight, row)
        assert torch.equal(got.reshape(96), direct)
