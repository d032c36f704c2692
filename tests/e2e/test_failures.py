"""Model failures: the default checkpoint out of reach at start (offline) gives the tiny fallback with its
banner; an exception inside one request gives that user a short error and the next request works."""

from __future__ import annotations

import gradio as gr
import huggingface_hub.constants
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from kosmos2.demo import loading
from kosmos2.ui import runner as ui_runner
from kosmos2.ui.runner import Submission
from launch import ROOT, serve

CAT = ROOT / "assets" / "cat.jpg"


def test_the_default_checkpoint_out_of_reach_at_start_serves_the_tiny_fallback_with_its_banner(tmp_path, monkeypatch):
    monkeypatch.delenv("KOSMOS2_CHECKPOINT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at start
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    holder = loading.ModelHolder()
    with serve(holder) as url:
        caption, _, _ = Client(url, verbose=False).predict(handle_file(str(CAT)), max_new_tokens=2, api_name="/plain")
    assert caption.startswith("An image of")
    assert holder.loaded.is_tiny and "microsoft/kosmos-2-patch14-224" in holder.loaded.note
    banner = ui_runner.Runner(holder).banner()
    assert banner["visible"] is True and "tiny checkpoint with random weights" in banner["value"]
    assert ui_runner.Runner(loading.ModelHolder(str(tmp_path / "nothing"), force_tiny=True)).banner()["visible"] is True


@pytest.fixture
def failing_once(monkeypatch):
    """A tiny model whose language decoder raises once, with a message full of internals."""
    holder = loading.ModelHolder(force_tiny=True)
    decoder = holder.get().model.text_model.model
    original = decoder.forward
    failures = [RuntimeError(f"CUDA error: out of memory in {ROOT}/kosmos2/language.py")]

    def flaky(*args, **kwargs):
        if failures:
            raise failures.pop()
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", flaky)
    return holder


def test_an_exception_inside_a_request_reaches_only_that_user_as_a_short_error(failing_once):
    with serve(failing_once) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError) as info:
            client.predict(handle_file(str(CAT)), max_new_tokens=2, api_name="/caption")
        assert str(info.value) == ui_runner.USER_ERROR
        caption, _, png = client.predict(handle_file(str(CAT)), max_new_tokens=2, api_name="/caption")
        assert caption.startswith("An image of") and png.endswith(".png")


def test_the_streaming_ui_handler_fails_the_same_way(failing_once):
    runner = ui_runner.Runner(failing_once)
    settings = {"max_new_tokens": 4}
    with pytest.raises(gr.Error) as info:
        list(runner.ui(Submission("caption", str(CAT), None, [], True, settings)))
    assert info.value.message == ui_runner.USER_ERROR
    *_, (page, timing, raw, entities, png, _) = runner.ui(Submission("caption", str(CAT), None, [], True, settings))
    assert "k2-caption" in page and "new tokens in" in timing


def test_int8_mode_is_labelled_experimental_in_the_page(monkeypatch):
    monkeypatch.setenv("KOSMOS2_QUANTIZE", "int8")
    holder = loading.ModelHolder(force_tiny=True)
    loaded = holder.get()
    assert loaded.quantize == "int8"
    assert type(loaded.model.text_model.lm_head).__name__ == "Int8Linear"
    banner = ui_runner.Runner(holder).banner()
    assert banner["visible"] is True
    assert "Experimental int8 mode" in banner["value"] and "tiny checkpoint" in banner["value"]
    *_, (caption, _, png) = ui_runner.Runner(holder).api(Submission("caption", str(CAT), None, [], True, {"max_new_tokens": 4}))
    assert caption.startswith("An image of") and png.endswith(".png")


def test_unknown_quantize_mode_is_refused(monkeypatch):
    monkeypatch.setenv("KOSMOS2_QUANTIZE", "int4")
    with pytest.raises(ValueError, match="KOSMOS2_QUANTIZE"):
        loading.ModelHolder(force_tiny=True)


def test_a_bug_while_building_the_request_is_a_short_error_not_a_bare_one(monkeypatch):

    def broken(*args, **kwargs):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(ui_runner, "build_request", broken)
    with pytest.raises(gr.Error) as info:
        list(ui_runner.Runner(loading.ModelHolder(force_tiny=True)).api(Submission("caption", str(CAT), None, [], True, {})))
    assert info.value.message == ui_runner.USER_ERROR
