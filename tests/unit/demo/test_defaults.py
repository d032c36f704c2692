"""Defaults as behaviour, with their literal values: the dtype per device, every KOSMOS2_* setting and a bad
one, the prefix cache's size, and the upload limit of a server launched with ``main()``'s settings."""

from __future__ import annotations

import gradio as gr
import httpx
import pytest
import torch

from kosmos2.demo.loading import ModelHolder
from kosmos2.quantize import Int8Linear
from kosmos2.serving import Engine, PrefixCache, PrefixEntry

from launch import import_app

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_kosmos2_environment(monkeypatch):
    for name in ("KOSMOS2_CHECKPOINT", "KOSMOS2_DTYPE", "KOSMOS2_QUANTIZE"):
        monkeypatch.delenv(name, raising=False)


def test_cpu_default_is_float32_and_cuda_default_is_bfloat16():
    assert ModelHolder(force_tiny=True, device="cpu").get().model.dtype == torch.float32
    assert ModelHolder(force_tiny=True, device="cuda").dtype == torch.bfloat16  # chosen before anything loads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_machine_loads_bfloat16_on_the_gpu():
    model = ModelHolder(force_tiny=True).get().model
    assert (model.dtype, model.device.type) == (torch.bfloat16, "cuda")


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                         ("float16", torch.float16)])
def test_each_kosmos2_dtype_is_the_loaded_dtype(monkeypatch, name, dtype):
    monkeypatch.setenv("KOSMOS2_DTYPE", name)
    assert ModelHolder(force_tiny=True, device="cpu").get().model.dtype == dtype


@pytest.mark.parametrize("variable, value", [("KOSMOS2_DTYPE", "float64"), ("KOSMOS2_DTYPE", "fp32"),
                                             ("KOSMOS2_QUANTIZE", "int4")])
def test_a_bad_setting_is_refused_before_anything_loads(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"{variable}.*{value}"):
        ModelHolder(force_tiny=True, device="cpu")


def test_kosmos2_quantize_int8_gives_int8_text_layers(monkeypatch):
    monkeypatch.setenv("KOSMOS2_QUANTIZE", "int8")
    loaded = ModelHolder(force_tiny=True, device="cpu").get()
    assert loaded.quantize == "int8"
    assert any(isinstance(m, Int8Linear) for m in loaded.model.text_model.modules())
    assert not any(isinstance(m, Int8Linear) for m in loaded.model.vision_model.modules())


def test_kosmos2_checkpoint_names_the_folder_or_the_tiny_checkpoint(monkeypatch, tiny_checkpoint):
    monkeypatch.setenv("KOSMOS2_CHECKPOINT", str(tiny_checkpoint))
    loaded = ModelHolder(device="cpu").get()
    assert (loaded.checkpoint, loaded.is_tiny) == (str(tiny_checkpoint), False)
    monkeypatch.setenv("KOSMOS2_CHECKPOINT", "tiny")
    assert ModelHolder(device="cpu").get().is_tiny
    monkeypatch.delenv("KOSMOS2_CHECKPOINT")
    assert ModelHolder(device="cpu").checkpoint == "microsoft/kosmos-2-patch14-224"


def test_the_prefix_cache_keeps_the_eight_most_recent_images(tiny_checkpoint):
    engine = ModelHolder(str(tiny_checkpoint), device="cpu").get().batcher.engine
    assert isinstance(engine, Engine) and engine.prefixes.max_entries == 8
    cache = PrefixCache()
    entry = PrefixEntry(torch.zeros(1), torch.zeros(1))
    for k in range(9):
        cache.put(f"image{k}", entry)
    assert cache.keys() == [f"image{k}" for k in range(1, 9)]  # the oldest of nine is gone


def test_a_server_launched_by_main_refuses_uploads_over_50_mb(monkeypatch, tmp_path):
    app = import_app()
    launched: list[gr.Blocks] = []
    launch = gr.Blocks.launch

    def launch_in_the_background(self, **kwargs):
        launched.append(self)
        return launch(self, **{**kwargs, "prevent_thread_lock": True, "quiet": True})

    monkeypatch.setattr(gr.Blocks, "launch", launch_in_the_background)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)  # main() returns once it is serving
    app.main(["--tiny"])  # main()'s own launch settings
    (demo,) = launched
    try:
        url = demo.local_url
        for size, accepted in ((50 * MB - 4096, True), (50 * MB + 4096, False)):
            upload = tmp_path / f"upload-{size}.bin"
            upload.write_bytes(b"\0" * size)
            with open(upload, "rb") as f:
                response = httpx.post(f"{url}gradio_api/upload", files={"files": (upload.name, f)}, timeout=60)
            assert (response.status_code == 200) == accepted, (size, response.status_code, response.text[:200])
    finally:
        demo.close()
