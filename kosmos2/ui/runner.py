"""The app's runner: tasks run for the page and for the API on one lazily loaded model, with the page's
status line and banners."""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from ..demo import draw, view
from ..demo.detect import Detection
from ..demo.execute import run_task, task_settings
from ..demo.loading import ModelHolder
from ..demo.results import TaskResult
from ..demo.settings import DetectionSettings
from ..demo.tasks import TASKS, Task, build_request, find_task
from ..errors import UserError
from .outputs import OutputFolder

log = logging.getLogger("kosmos2.app")
OUTPUT_MAX_AGE_S = 3600
OUTPUT_MAX_FILES = 64  # annotated PNGs kept in the private output folder (Gradio serves its own copy)
STREAM_INTERVAL_S = 0.15  # at most ~7 partial updates a second
API_POLL_S = 0.25  # how often an API call lets Gradio check whether its client is still there
STATUS_POLL_S = 0.5  # how often the page's status line is refreshed while the model loads
TINY_BANNER = (
    "⚠️ Running on the built-in <b>tiny checkpoint with random weights</b>: outputs are random. "
    "Set <code>KOSMOS2_CHECKPOINT</code> / go online to get the real model."
)
TINY_MCP_NOTE = (
    "Note: this server runs the built-in tiny checkpoint with random weights, so the answer above is "
    "random, not KOSMOS-2's."
)
INT8_BANNER = (
    "🧪 <b>Experimental int8 mode</b> (<code>KOSMOS2_QUANTIZE=int8</code>): faster on CPU, but its "
    "quality has not been verified against the full-precision model."
)
USER_ERROR = "Generation failed because of an internal error; please try again."


@dataclass(frozen=True)
class Submission:
    """What a tab or an API call sends for one run: the task's name, its raw inputs (checked by the run),
    its settings by name (the task's group) and the quarter turns the box annotator rotated the image by."""

    task: str
    image: Any
    text: str | None
    boxes: Any
    grounding_on: bool
    settings: Mapping[str, Any]
    quarter_turns: int = 0


class Runner:
    """Runs tasks for the UI and the API on one lazily loaded model."""

    def __init__(self, holder: ModelHolder, tasks: Mapping[str, Task] = TASKS) -> None:
        self.holder = holder
        self.tasks = tasks
        # Gradio copies each result into its cache; for generator endpoints it never deletes the copy
        self.outputs = OutputFolder(OUTPUT_MAX_FILES, OUTPUT_MAX_AGE_S, copies=get_upload_folder())

    async def notices(self) -> AsyncIterator[dict]:
        """The page's status line while the model loads (starting it if nobody has: the page load is a
        first use), refreshed every ``STATUS_POLL_S``; then the banner, if the tiny checkpoint or the
        experimental int8 mode is in use. After a failure it keeps watching: the next request tries again.
        Async: a page waiting for the model holds no thread (Gradio stops it when the page goes away)."""
        self.holder.start()
        shown = None
        while (status := self.holder.status).stage != "ready":
            icon = "⚠️" if status.stage == "failed" else "⏳"
            line = notice_line("k2-loading", f"{icon} {html.escape(status.describe())}")
            if line != shown:
                yield gr.update(visible=True, value=line)
                shown = line
            await asyncio.sleep(STATUS_POLL_S)
        yield self.banner()

    def banner(self) -> dict:
        """Loads the model (first call) and shows the banner when the tiny checkpoint or the
        experimental int8 mode is in use."""
        loaded = self.holder.get()
        notes = [TINY_BANNER] * loaded.is_tiny + [INT8_BANNER] * (loaded.quantize == "int8")
        if not notes:
            return gr.update(visible=False)
        return gr.update(visible=True, value="".join(notice_line("k2-banner", n, alert=True) for n in notes))

    def mcp_note(self) -> str | None:
        """The line each MCP tool answer ends with: on the tiny checkpoint, that it is random (an MCP client
        sees no banner)."""
        return TINY_MCP_NOTE if self.holder.get().is_tiny else None

    def stream(
        self, sent: Submission, min_interval_s: float | None = None, partial: bool = True
    ) -> Iterator[tuple[Any, TaskResult | None]]:
        """Validated run yielding (RGB image, result), partial results at most every ``min_interval_s``
        (default ``STREAM_INTERVAL_S``; None in their place without ``partial``). User errors become
        ``gr.Error`` with their message only, other errors a generic one (details go to the server log)."""
        try:
            spec = find_task(sent.task, self.tasks)
            request = build_request(spec, sent.image, sent.text, sent.boxes, sent.grounding_on, sent.quarter_turns)
            chosen = task_settings(spec, sent.settings)
            loaded = self.holder.get()
            interval = STREAM_INTERVAL_S if min_interval_s is None else min_interval_s
            for result in run_task(loaded, spec, request, chosen, interval, partial):
                yield request.image, result
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception:
            log.exception("task %s failed", sent.task)
            raise gr.Error(USER_ERROR, print_exception=False) from None

    def ui(self, sent: Submission) -> Iterator[tuple]:
        """UI outputs: linked HTML, timing, raw text, entities JSON, annotated PNG (final step only), and
        the result."""
        uri = None
        for shown, result in self.stream(sent):
            assert result is not None  # (partial results asked for)
            uri = uri or view.image_data_uri(shown)
            png = self.outputs.save(draw.annotate(shown, result.annotations())) if result.done else gr.update()
            yield *_tab_outputs(uri, result, png), result

    def refilter(self, found: Detection | None, heat_for: str | None, settings: Mapping[str, Any]) -> tuple:
        """A detect result's UI outputs again under new filter ``settings`` (no model call), with the
        heat map of where the model looks for the phrase ``heat_for`` (None: none)."""
        if found is None:
            return (gr.update(),) * 5
        try:
            result = found.result(DetectionSettings.from_user(**settings), refiltered=True)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        shown = found.request.image
        if heat_for in found.phrases:
            shown = draw.heat_overlay(shown, found.density(found.phrases.index(heat_for)))
        png = self.outputs.save(draw.annotate(shown, result.annotations()))
        return _tab_outputs(view.image_data_uri(shown), result, png)

    def api(self, sent: Submission) -> Iterator[tuple]:
        """API outputs: caption, entities, path of the annotated PNG, once at the end. Until then it yields
        "no change" every ``API_POLL_S`` seconds, so that Gradio can stop it when the client cancels or goes
        away: closing this generator drops the request's rows from their batch at the next step. The first
        "no change" comes before any work: Gradio can close a generator only once it has yielded."""
        yield gr.skip(), gr.skip(), gr.skip()
        for shown, result in self.stream(sent, min_interval_s=API_POLL_S, partial=False):
            if result is None:
                yield gr.skip(), gr.skip(), gr.skip()
            else:
                png = self.outputs.save(draw.annotate(shown, result.annotations()))
                yield result.caption, result.entities_json(), png


def notice_line(kind: str, inner_html: str, alert: bool = False) -> str:
    """A one-line notice above the tabs, styled as an alert for ``alert`` (the banners), all of one height."""
    colours = "background:#fff4e5;border:1px solid #f0a202" if alert else "background:#f4f6f8;border:1px solid #d0d7de"
    return (
        f'<div class="{kind}" role="{"alert" if alert else "status"}" style="{colours};border-radius:8px;'
        f'padding:.5em 1em;margin:0;line-height:1.5">{inner_html}</div>'
    )


def _tab_outputs(image_uri: str, result: TaskResult, png: Any) -> tuple:
    """A result as the tab's outputs (see :func:`_outputs`): linked HTML, timing, raw text, entities JSON,
    annotated PNG."""
    return view.render(image_uri, result), result.timing_text(), result.raw, result.entities_json(), png
