"""Every setting's minimum and maximum are accepted, and one step beyond each is refused with the setting's
name and range, through the API (the served app, called with gradio_client) and the command line; of a
setting with choices, each choice is accepted and another value refused.

The limits are written out here by hand, from the documented ranges (docs/command-line.md, "Settings"), and checked
against the settings spec first, so that a changed range is a visible decision.
"""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from kosmos2.cli.main import main
from kosmos2.demo import loading
from kosmos2.demo.settings import DETECTION_SETTINGS, SETTINGS
from launch import ROOT, serve

CAT = ROOT / "assets" / "cat.jpg"

# name: (label, minimum, maximum, step)
GENERATION_LIMITS = {
    "max_new_tokens": ("Max new tokens", 1, 512, 1),
    "num_beams": ("Number of beams", 1, 8, 1),
    "temperature": ("Temperature", 0.05, 2.0, 0.05),
    "top_p": ("Top-p", 0.05, 1.0, 0.05),
    "no_repeat_ngram_size": ("No-repeat n-gram size", 0, 10, 1),
}
DETECTION_LIMITS = {
    "threshold": ("Box threshold", 0.0, 1.0, 0.01),
    "max_instances": ("Max boxes per phrase", 1, 32, 1),
    "nms_iou": ("Overlap limit (NMS IoU)", 0.0, 1.0, 0.05),
    "candidates": ("Candidate cells", 1, 32, 1),
}
DECODINGS = ("greedy", "beam", "sample")
# the decoding under which a setting is used (the others ignore it, but every value given is checked)
DECODING_OF = {"num_beams": "beam", "temperature": "sample", "top_p": "sample"}


def test_the_limits_here_are_the_settings_spec():
    spec = {**SETTINGS, **DETECTION_SETTINGS}
    limits = {**GENERATION_LIMITS, **DETECTION_LIMITS}
    assert set(spec) == {*limits, "decoding"}
    for name, (label, low, high, step) in limits.items():
        s = spec[name]
        assert (s.label, s.minimum, s.maximum, s.step) == (label, low, high, step), name
    assert spec["decoding"].choices == DECODINGS


def _cases() -> list[tuple[str, float | str, bool]]:
    """(name, value, accepted): each limit, one step beyond it, each choice and a value that is none."""
    cases = []
    for name, (_, low, high, step) in {**GENERATION_LIMITS, **DETECTION_LIMITS}.items():
        cases += [(name, low, True), (name, high, True),
                  (name, round(low - step, 6), False), (name, round(high + step, 6), False)]
    return cases + [("decoding", d, True) for d in DECODINGS] + [("decoding", "top_k", False)]


CASES = _cases()
IDS = [f"{name}={value}" for name, value, _ in CASES]


def _refusal(name: str, cli: bool = False) -> str:
    """The message's start: the API names a setting by its label, the command line by its flag."""
    if name == "decoding":  # the command line's parser knows the choices
        return "argument --decoding: invalid choice: 'top_k'" if cli else "Decoding must be one of greedy, beam, sample"
    label, low, high, _ = {**GENERATION_LIMITS, **DETECTION_LIMITS}[name]
    return f"{'--' + name.replace('_', '-') if cli else label} must be between {low:g} and {high:g}"


def _api_call(name: str, value: float | str) -> tuple[str, dict]:
    """The endpoint and its keyword arguments for the setting ``name`` at ``value``."""
    if name in DETECTION_LIMITS:
        return "/detect", {"phrases": "a cat", name: value}
    settings = {"max_new_tokens": 1, "decoding": DECODING_OF.get(name, "greedy"), name: value}
    return "/caption", settings


@pytest.fixture(scope="module")
def client():
    with serve(loading.ModelHolder(force_tiny=True)) as url:
        yield Client(url, verbose=False)


@pytest.mark.parametrize(("name", "value", "accepted"), CASES, ids=IDS)
def test_through_the_api(client, name, value, accepted):
    endpoint, kwargs = _api_call(name, value)
    if accepted:
        caption, _, _ = client.predict(handle_file(str(CAT)), **kwargs, api_name=endpoint)
        assert isinstance(caption, str) and caption
    else:
        with pytest.raises(AppError, match=_refusal(name).replace("(", r"\(").replace(")", r"\)")):
            client.predict(handle_file(str(CAT)), **kwargs, api_name=endpoint)


@pytest.mark.parametrize(("name", "value", "accepted"), CASES, ids=IDS)
def test_through_the_command_line(capsys, tiny_checkpoint, name, value, accepted):
    endpoint, kwargs = _api_call(name, value)
    argv = [str(CAT), "--checkpoint", str(tiny_checkpoint), "--json"]
    if endpoint == "/detect":
        argv += ["--task", "detect", "--text", kwargs.pop("phrases")]
    for key, v in kwargs.items():
        argv += [f"--{key.replace('_', '-')}", str(v)]
    status = main(argv)
    err = capsys.readouterr().err
    if accepted:
        assert status == 0, err
    else:
        assert status == 2 and err.startswith(f"error: {_refusal(name, cli=True)}") and err.count("\n") == 1, err
