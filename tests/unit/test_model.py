"""The model against the reference implementation (transformers) on tiny checkpoints, and checkpoint loading."""

from __future__ import annotations

import json
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kosmos2 import Kosmos2Config, Kosmos2ForConditionalGeneration, Kosmos2Model
from kosmos2.hub import CheckpointError
from kosmos2.tiny import state_dict_shapes
from reference_model import CHECKPOINTS, MODEL_B, pixel_values, prompt_inputs, reference_model, token_id



@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request, make_checkpoint) -> Path:
    return make_checkpoint(request.param, **CHECKPOINTS[request.param])


def _batch(folder: Path, image_size: int) -> dict[str, torch.Tensor]:
    """Three different prompts (left-padded) and images."""
    g = token_id(folder, "<grounding>")
    inputs = prompt_inputs(folder, [[g, 10, 20, 30], [g, 11], [40, 50, 60, 70, 80, 90]])
    inputs["pixel_values"] = pixel_values(3, image_size)
    return inputs


def test_full_size_model_has_the_seed_parameter_count_and_names():
    with torch.device("meta"):
        model = Kosmos2ForConditionalGeneration(Kosmos2Config())
    assert sum(p.numel() for p in model.parameters()) == 1_664_485_376
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == state_dict_shapes(Kosmos2Config())
    assert model.text_model.lm_head.weight is model.text_model.model.embed_tokens.weight


def test_module_names_match_the_table_for_another_shape():
    config = MODEL_B["config"]
    config = replace(config, text_config=replace(config.text_config, vocab_size=100))
    with torch.device("meta"):
        model = Kosmos2Model(config)
    expected = state_dict_shapes(config)
    del expected["text_model.lm_head.weight"]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_forward_matches_reference(checkpoint):
    ours = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    ref = reference_model(checkpoint, attn_implementation="eager")
    inputs = _batch(checkpoint, ours.config.vision_config.image_size)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    labels = labels.masked_fill(inputs["image_embeds_position_mask"] == 1, -100)
    flags = dict(output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        got = ours(**inputs, labels=labels, **flags)
        want = ref(**inputs, labels=labels, **flags)
    torch.testing.assert_close(got.logits, want.logits, atol=2e-4, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-4, rtol=0)
    assert len(got.hidden_states) == len(want.hidden_states) == ours.config.text_config.layers + 1
    for g, w in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(g, w, atol=2e-4, rtol=0)
    assert len(got.attentions) == len(want.attentions)
    for g, w in zip(got.attentions, want.attentions):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    image = want.image_outputs
    torch.testing.assert_close(got.image_embeds, image.pooler_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.projection_attentions, image.projection_attentions, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.vision_model_output.last_hidden_state, image.last_hidden_state, atol=1e-5, rtol=0)
    for g, w in zip(got.vision_model_output.hidden_states, image.hidden_states, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    for g, w in zip(got.vision_model_output.attentions, image.attentions, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    assert torch.isfinite(got.logits).all()


def test_sdpa_path_matches_explicit_path_and_reference(checkpoint):
    ours = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    ref = reference_model(checkpoint)  # SDPA
    inputs = _batch(checkpoint, ours.config.vision_config.image_size)
    with torch.no_grad():
        fast = ours(**inputs)
        explicit = ours(**inputs, output_attentions=True)
        want = ref(**inputs)
    torch.testing.assert_close(fast.logits, want.logits, atol=2e-4, rtol=0)
    torch.testing.assert_close(fast.logits, explicit.logits, atol=2e-5, rtol=0)


def test_base_model_last_hidden_state_matches_reference(checkpoint):
    ours = Kosmos2Model.from_pretrained(checkpoint)
    ref = reference_model(checkpoint, with_head=False)
    inputs = _batch(checkpoint, ours.config.vision_config.image_size)
    with torch.no_grad():
        got = ours(**inputs)
        want = ref(**inputs)
    assert not hasattr(ours.text_model, "lm_head")
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=2e-4, rtol=0)


def test_outputs_have_attribute_key_and_tuple_access(tiny_checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    inputs = _batch(tiny_checkpoint, 56)
    with torch.no_grad():
        out = model(**inputs)
        as_tuple = model(**inputs, use_cache=False, return_dict=False)
    assert out["logits"] is out.logits and out[0] is out.logits
    assert "loss" not in out.keys() and out.past_key_values is not None
    assert out.image_embeds.shape == (3, 64, 32)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_kv_cache_steps_equal_full_forward(checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    size = model.config.vision_config.image_size
    inputs = prompt_inputs(checkpoint, [[7, 8, 9, 10, 11, 12]])
    pv = pixel_values(1, size)
    ids, slots = inputs["input_ids"], inputs["image_embeds_position_mask"]
    prompt = ids.shape[1] - 4
    with torch.no_grad():
        full = model(pixel_values=pv, input_ids=ids, image_embeds_position_mask=slots, use_cache=False).logits
        first = model(pixel_values=pv, input_ids=ids[:, :prompt], image_embeds_position_mask=slots[:, :prompt])
        steps = [first.logits[:, -1]]
        cache = first.past_key_values
        for t in range(prompt, ids.shape[1]):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, image_embeds=first.image_embeds)
            steps.append(out.logits[:, -1])
    assert cache.length == ids.shape[1]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, prompt - 1 :], atol=2e-5, rtol=0)


def test_fully_padded_row_gives_no_nan(tiny_checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    inputs = _batch(tiny_checkpoint, 56)
    inputs["attention_mask"][1] = 0
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()


def test_head_mask_of_ones_changes_nothing_and_zeros_do(tiny_checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    inputs = _batch(tiny_checkpoint, 56)
    with torch.no_grad():
        plain = model(**inputs).logits
        ones = model(**inputs, head_mask=torch.ones(2, 4)).logits
        zero_head = model(**inputs, head_mask=torch.tensor([1.0, 0.0, 1.0, 1.0])).logits
    torch.testing.assert_close(ones, plain, atol=2e-5, rtol=0)
    assert (zero_head - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="head_mask"):
        model(**inputs, head_mask=torch.ones(3))


def test_bad_inputs_get_clear_errors(tiny_checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    inputs = _batch(tiny_checkpoint, 56)
    wrong_count = dict(inputs, image_embeds_position_mask=inputs["image_embeds_position_mask"].roll(1, dims=1))
    wrong_count["image_embeds_position_mask"][0, -1] = 1
    with pytest.raises(ValueError, match="exactly 64 ones"):
        model(**wrong_count)
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(**dict(inputs, pixel_values=torch.zeros(3, 3, 48, 48)))
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(**dict(inputs, pixel_values=torch.zeros(3, 4, 56, 56)))
    with pytest.raises(ValueError, match="batch size mismatch"):
        model(**dict(inputs, pixel_values=torch.zeros(2, 3, 56, 56)))
    with pytest.raises(ValueError, match="pixel_values or image_embeds"):
        model(**dict(inputs, pixel_values=None))
    with pytest.raises(ValueError, match="attention_mask"):
        model(**dict(inputs, attention_mask=inputs["attention_mask"][:, 1:]))
    with pytest.raises(ValueError, match="KVCache"):
        model(**inputs, past_key_values=((torch.zeros(1), torch.zeros(1)),))


# ----------------------------------------------------------------------------- loading


def _copy_checkpoint(src: Path, dst: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    dst.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    if tensors is not None:
        save_file(tensors, str(dst / "model.safetensors"))
    return dst


def _logits(model: Kosmos2ForConditionalGeneration, folder: Path) -> torch.Tensor:
    with torch.no_grad():
        return model(**_batch(folder, model.config.vision_config.image_size)).logits


def test_loading_builds_on_meta_and_reads_generation_defaults(tiny_checkpoint, monkeypatch, tmp_path):
    folder = _copy_checkpoint(tiny_checkpoint, tmp_path / "ck", load_file(str(tiny_checkpoint / "model.safetensors")))
    defaults = {"bos_token_id": 0, "eos_token_id": 5, "pad_token_id": 1}
    (folder / "generation_config.json").write_text(json.dumps(defaults))
    devices = []
    original = Kosmos2ForConditionalGeneration.__init__

    def spy(self, config):
        devices.append(torch.empty(0).device)
        original(self, config)

    monkeypatch.setattr(Kosmos2ForConditionalGeneration, "__init__", spy)
    model = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    assert devices == [torch.device("meta")]
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert model.generation_config.eos_token_id == 5 and model.generation_config.pad_token_id == 1
    assert not model.training


def test_tied_matrix_under_either_name_fills_both(checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    stored = load_file(str(checkpoint / "model.safetensors"))
    matrix = stored.get("text_model.model.embed_tokens.weight", stored.get("text_model.lm_head.weight"))
    assert model.text_model.lm_head.weight is model.text_model.model.embed_tokens.weight
    torch.testing.assert_close(model.text_model.lm_head.weight, matrix, atol=0, rtol=0)


def test_strict_key_check_lists_missing_and_unexpected(tiny_checkpoint, tmp_path):
    tensors = load_file(str(tiny_checkpoint / "model.safetensors"))
    del tensors["text_model.model.layers.1.ffn.fc2.bias"]
    tensors["text_model.model.layers.7.extra.weight"] = torch.zeros(2)
    folder = _copy_checkpoint(tiny_checkpoint, tmp_path / "ck", tensors)
    with pytest.raises(CheckpointError) as error:
        Kosmos2ForConditionalGeneration.from_pretrained(folder)
    assert "text_model.model.layers.1.ffn.fc2.bias" in str(error.value)
    assert "text_model.model.layers.7.extra.weight" in str(error.value)


def test_wrong_shape_is_an_error(tiny_checkpoint, tmp_path):
    tensors = load_file(str(tiny_checkpoint / "model.safetensors"))
    tensors["image_to_text_projection.latent_query"] = torch.zeros(3, 32)
    folder = _copy_checkpoint(tiny_checkpoint, tmp_path / "ck", tensors)
    with pytest.raises(CheckpointError, match="latent_query"):
        Kosmos2ForConditionalGeneration.from_pretrained(folder)


def test_stray_buffer_keys_are_ignored(tiny_checkpoint, tmp_path):
    tensors = load_file(str(tiny_checkpoint / "model.safetensors"))
    tensors["vision_model.model.embeddings.position_ids"] = torch.arange(17)[None]
    tensors["text_model.model.embed_positions.weights"] = torch.zeros(10, 32)
    folder = _copy_checkpoint(tiny_checkpoint, tmp_path / "ck", tensors)
    model = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    plain = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    torch.testing.assert_close(_logits(model, folder), _logits(plain, folder))


def test_sharded_checkpoint_loads(tiny_checkpoint, tmp_path):
    tensors = load_file(str(tiny_checkpoint / "model.safetensors"))
    folder = _copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / file))
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    ref = reference_model(tiny_checkpoint)
    with torch.no_grad():
        want = ref(**_batch(folder, 56)).logits
    torch.testing.assert_close(_logits(model, folder), want, atol=2e-4, rtol=0)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        Kosmos2ForConditionalGeneration.from_pretrained(folder)


def test_bfloat16_load_converts_each_tensor(tiny_checkpoint):
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    stored = load_file(str(tiny_checkpoint / "model.safetensors"))
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    for name, value in stored.items():
        torch.testing.assert_close(params[name], value.to(torch.bfloat16), atol=0, rtol=0)
    ref = reference_model(tiny_checkpoint).to(torch.bfloat16)
    inputs = _batch(tiny_checkpoint, 56)
    with torch.no_grad():
        got = model(**inputs).logits
        want = ref(**inputs).logits
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    back = model.to(torch.float32)
    assert back.dtype == torch.float32
    assert back.text_model.lm_head.weight is back.text_model.model.embed_tokens.weight


def test_bfloat16_load_holds_at_most_two_float32_tensors_at_once(tiny_checkpoint, monkeypatch):
    import kosmos2.weights

    real_open = kosmos2.weights.safe_open
    alive: set[int] = set()
    counts = {"peak": 0, "read": 0}

    class Spy:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.file = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.file.keys()

        def get_slice(self, name):
            return self.file.get_slice(name)

        def get_tensor(self, name):
            tensor = self.file.get_tensor(name)
            alive.add(id(tensor))
            weakref.finalize(tensor, alive.discard, id(tensor))
            counts["read"] += 1
            counts["peak"] = max(counts["peak"], len(alive))
            return tensor

    monkeypatch.setattr(kosmos2.weights, "safe_open", Spy)
    Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    # each float32 tensor is dropped once converted (the previous one may still be referenced while the next is read)
    assert counts["read"] > 20 and counts["peak"] <= 2


def test_missing_and_incomplete_folders_raise_checkpoint_error(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Kosmos2ForConditionalGeneration.from_pretrained(tmp_path / "nowhere")
    config_only = _copy_checkpoint(tiny_checkpoint, tmp_path / "config_only")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Kosmos2ForConditionalGeneration.from_pretrained(config_only)
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="config.json"):
        Kosmos2Model.from_pretrained(no_config)


def test_unknown_hub_id_offline_raises_checkpoint_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError):
        Kosmos2ForConditionalGeneration.from_pretrained("nobody/no-such-kosmos-2")


def test_pickle_weights_are_never_read(tiny_checkpoint, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", forbidden)
    only_bin = _copy_checkpoint(tiny_checkpoint, tmp_path / "only_bin")
    (only_bin / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="never loaded"):
        Kosmos2ForConditionalGeneration.from_pretrained(only_bin)
    both = _copy_checkpoint(tiny_checkpoint, tmp_path / "both", load_file(str(tiny_checkpoint / "model.safetensors")))
    (both / "pytorch_model.bin").write_bytes(b"not a pickle")
    Kosmos2ForConditionalGeneration.from_pretrained(both)


def _embeds(model, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings as a user would pass them: the (shared) embedding table looked up, unscaled."""
    return model.text_model.model.embed_tokens.weight[ids].detach().clone()


def test_inputs_embeds_match_the_reference_for_a_prompt_and_cached_steps(checkpoint):
    """No input_ids: positions come from the embeddings' length and the cache (pad + 1 + past, as the
    reference counts them), for the prompt (image spliced in) and for each cached decode step."""
    ours = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    ref = reference_model(checkpoint)
    inputs = prompt_inputs(checkpoint, [[token_id(checkpoint, "<grounding>"), 10, 20, 30, 40, 50]])
    pv = pixel_values(1, ours.config.vision_config.image_size, seed=3)
    ids, slots = inputs["input_ids"], inputs["image_embeds_position_mask"]
    prompt = ids.shape[1] - 3
    with torch.no_grad():
        runs = []
        for model in (ours, ref):
            first = model(pixel_values=pv, inputs_embeds=_embeds(model, ids[:, :prompt]),
                          image_embeds_position_mask=slots[:, :prompt], use_cache=True)
            steps, cache = [first.logits], first.past_key_values
            for t in range(prompt, ids.shape[1]):
                out = model(inputs_embeds=_embeds(model, ids[:, t : t + 1]), past_key_values=cache,
                            image_embeds=first.image_embeds, use_cache=True)
                steps.append(out.logits)
                cache = out.past_key_values
            runs.append(steps)
    for got, want in zip(*runs, strict=True):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


def test_explicit_position_ids_match_the_reference(checkpoint):
    ours = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    ref = reference_model(checkpoint)
    inputs = _batch(checkpoint, ours.config.vision_config.image_size)
    length = inputs["input_ids"].shape[1]
    positions = (torch.arange(length) + torch.tensor([[2], [7], [3]])).long()  # shifted per row, not from the ids
    with torch.no_grad():
        got = ours(**inputs, position_ids=positions).logits
        want = ref(**inputs, position_ids=positions).logits
        plain = ours(**inputs).logits
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-3)  # the given positions are the ones used
