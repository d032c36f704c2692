"""One place per idea: a task record becomes a tab and an endpoint; a setting becomes a control, an API
parameter, a CLI flag and a server-side check."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from kosmos2.cli.task import parser
from kosmos2.demo.loading import ModelHolder
from kosmos2.demo.settings import DETECTION_SETTINGS, SETTINGS
from kosmos2.demo.tasks import TASKS, Example, Task

from launch import ROOT, import_app

CAT = ROOT / "assets" / "cat.jpg"
COUNT = Task("count", "Counting", "Say how many animals there are.", lambda _: ["<grounding> Count the animals:"],
             tab="Count things", button="Count", examples=(Example("cat.jpg"),))


@pytest.fixture(scope="module")
def extended():
    """The app built with one more task record than the table has, served locally."""
    app = import_app()
    demo = app.build_demo(ModelHolder(force_tiny=True), tasks={**TASKS, COUNT.name: COUNT})
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield demo, Client(url, verbose=False)
    finally:
        demo.close()


def test_an_extra_task_record_gets_its_tab_and_its_endpoint(extended):
    demo, client = extended
    components = demo.config["components"]
    assert any(c["type"] == "tabitem" and c["props"].get("label") == "Count things" for c in components)
    assert any(c["props"].get("elem_id") == "count-run" and c["props"].get("value") == "Count" for c in components)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {f"/{name}" for name in [*TASKS, "count"]}
    caption, entities, _ = client.predict(handle_file(str(CAT)), max_new_tokens=3, api_name="/count")
    assert caption.startswith("Count the animals:")  # the record's own prompt, after the <grounding> tag


# Each endpoint's parameters, written out by hand from the task table's inputs and settings groups.
PARAMETERS = {
    "caption": [], "detailed": [], "plain": [], "count": [],
    "ground": ["phrases"], "refer": ["boxes"], "ask": ["question", "boxes"], "prompt": ["prompt", "boxes", "grounding"],
}
DETECT_PARAMETERS = ["image", "phrases", "threshold", "max_instances", "nms_iou", "candidates"]


def test_each_endpoint_takes_exactly_its_task_inputs_and_settings_with_real_types(extended):
    _, client = extended
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, info in endpoints.items():
        names = [p["parameter_name"] for p in info["parameters"]]
        if name == "/detect":
            assert names == DETECT_PARAMETERS
            spec = DETECTION_SETTINGS
        else:
            assert names == ["image", *PARAMETERS[name[1:]], *SETTINGS], name
            spec = SETTINGS
        params = {p["parameter_name"]: p for p in info["parameters"]}
        assert all(params[s]["parameter_default"] == spec[s].default for s in spec), name
        for s, setting in spec.items():
            kind = params[s]["python_type"]["type"]
            assert kind == {int: "int", float: "float", str: "Literal[" + ", ".join(
                f"'{c}'" for c in setting.choices) + "]"}[setting.kind], (name, s, kind)
        if "boxes" in params:
            assert params["boxes"]["python_type"]["type"] == "list[list[float]]"


def test_the_api_page_example_of_every_endpoint_runs_as_shown(extended):
    """Each endpoint's example is its task's first (its image a path on this machine off Spaces), and every
    parameter has a description from the app, not only Gradio's words."""
    _, client = extended
    tasks = {**TASKS, COUNT.name: COUNT}
    for name, info in client.view_api(print_info=False, return_format="dict")["named_endpoints"].items():
        example = {p["parameter_name"]: p["example_input"] for p in info["parameters"]}
        first = (tasks[name[1:]].examples or (Example("cat.jpg"),))[0]  # a task without examples: the cat
        assert example["image"]["path"] == str(ROOT / "assets" / first.image), example
        assert [example[k] for k in ("phrases", "question", "prompt") if k in example] in ([], [first.text])
        assert example.get("boxes", [list(b) for b in first.boxes]) == [list(b) for b in first.boxes]
        assert all(p["python_type"]["description"] for p in info["parameters"]), info["parameters"]
        example["image"] = handle_file(example["image"]["path"])
        if "max_new_tokens" in example:
            example["max_new_tokens"] = 2  # the example's own value is 1..512; keep the test quick
        caption, entities, annotated = client.predict(**example, api_name=name)
        assert isinstance(caption, str) and isinstance(entities, list) and annotated, name


def test_the_api_page_call_with_its_shown_defaults_runs_for_every_endpoint(extended):
    """The "Use via API" page writes a parameter with a default as that default, the others as their example:
    a required text or box list must therefore have no default (an empty one fails: "Phrases are empty")."""
    _, client = extended
    for name, info in client.view_api(print_info=False, return_format="dict")["named_endpoints"].items():
        shown = {p["parameter_name"]: p["parameter_default"] if p["parameter_has_default"] else p["example_input"]
                 for p in info["parameters"]}
        assert all(v not in ("", []) for k, v in shown.items() if k in ("phrases", "question", "prompt")), (name, shown)
        shown["image"] = handle_file(shown["image"]["path"] if isinstance(shown["image"], dict) else shown["image"])
        caption, entities, annotated = client.predict(**shown, api_name=name)
        assert isinstance(caption, str) and isinstance(entities, list) and annotated, name


def test_a_setting_is_checked_on_the_server_with_its_own_label(extended):
    _, client = extended
    with pytest.raises(AppError, match="Number of beams must be between 1 and 8"):
        client.predict(handle_file(str(CAT)), decoding="beam", num_beams=9, api_name="/caption")


def test_every_setting_is_a_cli_flag_and_a_ui_control():
    flags = {a.dest: a for a in parser()._actions}
    assert all(name in flags for name in SETTINGS)
    assert list(flags["decoding"].choices) == ["greedy", "beam", "sample"]
    args = parser().parse_args(["x.jpg", "--top-p", "0.5", "--max-new-tokens", "7"])
    assert (args.top_p, args.max_new_tokens, args.decoding) == (0.5, 7, None)
    app = import_app()
    labels = {c["props"].get("label") for c in app.demo.config["components"]}
    assert {s.label for s in SETTINGS.values()} <= labels


def test_on_spaces_the_api_page_examples_give_the_spaces_own_image_url(monkeypatch):
    """On Spaces a client anywhere can run the example: the image is the Space's file on huggingface.co
    (which the server may fetch), not a path on the server."""
    from kosmos2.ui import api, hosting

    monkeypatch.setattr(hosting, "ON_SPACES", True)
    monkeypatch.setenv("SPACE_ID", "someone/kosmos2")
    image, _ = api._api_parameters(TASKS["refer"])["image"]
    assert image.example_payload()["path"] == "https://huggingface.co/spaces/someone/kosmos2/resolve/main/assets/cat.jpg"
