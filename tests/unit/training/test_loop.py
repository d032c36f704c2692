"""The training loop through the Python API on a tiny checkpoint: fixed targets are learned until the model
writes them, a run stopped and resumed ends with the uninterrupted run's weights, the saved folder loads
here and in the reference, and an output folder of another run is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kosmos2 import AutoProcessor, Kosmos2ForConditionalGeneration
from kosmos2.image_processing import open_image
from kosmos2.lora import LoraSpec
from kosmos2.tiny import tiny_config
from kosmos2.training import Trainer, TrainError, TrainSettings, World, check_output, read_examples, run_params
from kosmos2.training.loop import Order, learning_rate_factor
from reference_model import pixel_values, prompt_inputs
from scenes import write_scenes

NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, 3)
    return folder


def _trainer(checkpoint: Path, data: Path, out: Path, settings: TrainSettings) -> Trainer:
    examples, problems = read_examples(data / "refexp.jsonl", data)
    assert not problems
    model = Kosmos2ForConditionalGeneration.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    return Trainer(model, processor, examples, settings, out, checkpoint, str(checkpoint), validation=examples)


def _answers(folder: Path, data: Path) -> list[str]:
    model = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    examples, _ = read_examples(data / "refexp.jsonl", data)
    out = []
    for e in examples:
        inputs = processor(images=open_image(e.image), text=e.prompt, return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=8)[0, inputs["input_ids"].shape[1] :]
        out.append(processor.decode(ids.tolist()))
    return out


def test_the_schedule_and_the_order_of_examples():
    assert [round(learning_rate_factor(s, 4, 10), 4) for s in range(10)] == [
        0.25, 0.5, 0.75, 1.0, 1.0, 0.8333, 0.6667, 0.5, 0.3333, 0.1667,
    ]  # fmt: skip
    one = Order(10, TrainSettings(batch_size=4), World(0, 1, torch.device("cpu")))
    two = [Order(10, TrainSettings(batch_size=2), World(r, 2, torch.device("cpu"))) for r in (0, 1)]
    for step in range(5):  # one process with batch 4 and two with batch 2 take the same examples each step
        assert one.micro_batches(step)[0] == two[0].micro_batches(step)[0] + two[1].micro_batches(step)[0]
    first_epoch = one.micro_batches(0)[0] + one.micro_batches(1)[0] + one.micro_batches(2)[0][:2]
    assert sorted(first_epoch) == list(range(10))  # every example once per epoch


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fixed_targets_are_learned_until_the_model_writes_them(make_checkpoint, data, tmp_path, mode):
    checkpoint = make_checkpoint("no-dropout", config=tiny_config(0, text=NO_DROPOUT))
    lora = (
        LoraSpec(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=r".*(_proj|fc1|fc2|dense)")
        if mode == "lora"
        else None
    )
    settings = TrainSettings(steps=200, lr=3e-3 if lora else 1e-3, warmup=10, batch_size=3, loss_on="answer", lora=lora)
    result = _trainer(checkpoint, data, tmp_path / "out", settings).train(progress=False)
    assert result.steps == 200 and len(result.losses) == 200
    assert result.losses[-1][1] < 0.6 * result.losses[0][1]
    assert result.validations[-1][2:] == (3, 3)  # every held-out box found
    wanted = [e.answer + "</s>" for e in read_examples(data / "refexp.jsonl", data)[0]]
    assert _answers(tmp_path / "out", data) == wanted
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert ("adapter_model.safetensors" if lora else "model.safetensors") in files
    assert {"tokenizer.json", "preprocessor_config.json", "train.json", "run.json"} <= files
    assert not any(name.startswith("checkpoint-") for name in files)
    import transformers  # with peft installed, transformers itself loads the adapter folder too

    ref = transformers.Kosmos2ForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    ours = Kosmos2ForConditionalGeneration.from_pretrained(tmp_path / "out")
    inputs = prompt_inputs(checkpoint, [[5, 6, 7]])
    inputs["pixel_values"] = pixel_values(1, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, ref(**inputs).logits, atol=1e-4, rtol=0)


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def on_step(s: int, loss: float) -> None:
        if s == step:
            raise _Stop

    return on_step


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(tiny_checkpoint, data, tmp_path, mode):
    lora = LoraSpec(r=4, lora_dropout=0.1) if mode == "lora" else None
    settings = TrainSettings(steps=8, lr=1e-3, warmup=2, batch_size=2, grad_accum=2, save_every=3, lora=lora)
    whole = _trainer(tiny_checkpoint, data, tmp_path / "whole", settings).train(progress=False)
    with pytest.raises(_Stop):
        _trainer(tiny_checkpoint, data, tmp_path / "cut", settings).train(progress=False, on_step=_stop_at(5))
    assert [p.name for p in (tmp_path / "cut").glob("checkpoint-*")] == ["checkpoint-3"]
    (tmp_path / "cut" / "checkpoint-best").mkdir()  # the user's, not the loop's: kept
    resumed = _trainer(tiny_checkpoint, data, tmp_path / "cut", settings).train(progress=False)
    assert resumed.resumed_from == 3 and resumed.losses == whole.losses
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "cut" / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / "checkpoint-best").is_dir()


def test_a_full_run_saves_a_checkpoint_the_reference_loads(tiny_checkpoint, data, tmp_path):
    settings = TrainSettings(steps=3, lr=1e-3, batch_size=3)
    _trainer(tiny_checkpoint, data, tmp_path / "out", settings).train(progress=False)
    import transformers

    ref = transformers.Kosmos2ForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    ours = Kosmos2ForConditionalGeneration.from_pretrained(tmp_path / "out")
    before = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    inputs = prompt_inputs(tiny_checkpoint, [[5, 6, 7]])
    inputs["pixel_values"] = pixel_values(1, 56)
    with torch.no_grad():
        got, want, old = (m(**inputs).logits for m in (ours, ref, before))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (got - old).abs().max() > 1e-3  # the weights were trained


def test_an_output_folder_of_something_else_is_refused(tiny_checkpoint, data, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="holds no training run"):
        _trainer(tiny_checkpoint, data, tmp_path / "busy", TrainSettings(steps=1)).train(progress=False)
    _trainer(tiny_checkpoint, data, tmp_path / "out", TrainSettings(steps=1)).train(progress=False)
    with pytest.raises(TrainError, match="steps: 1 then, 2 now"):
        _trainer(tiny_checkpoint, data, tmp_path / "out", TrainSettings(steps=2)).train(progress=False)
    examples = read_examples(data / "refexp.jsonl", data)[0]
    two = run_params(TrainSettings(steps=1), str(tiny_checkpoint), examples, torch.float32, processes=2)
    with pytest.raises(TrainError, match="processes: 1 then, 2 now"):
        check_output(tmp_path / "out", two)
    with pytest.raises(TrainError, match="dtype: 'float32' then, 'bfloat16' now"):
        check_output(tmp_path / "out", {**two, "processes": 1, "dtype": "bfloat16"})
    with pytest.raises(TrainError, match="already holds this finished run"):
        _trainer(tiny_checkpoint, data, tmp_path / "out", TrainSettings(steps=1)).train(progress=False)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
