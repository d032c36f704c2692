"""The app's Blocks and its server: the page (header, status line, tabs), the API endpoints and the MCP
note, then ``python app.py``'s command line and launch until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

import gradio as gr

from ..demo.loading import MAX_BATCH_SIZE, TINY_CHECKPOINT, ModelHolder
from ..demo.signals import StopRequested, stop_on_signals
from ..demo.tasks import TASKS, Task
from ..errors import UserError
from .api import api_endpoints
from .hosting import ON_SPACES, ZERO_GPU
from .patches import MCP_NOTE, drop_stray_gradio_prints, fix_mcp_tool_outputs
from .runner import OUTPUT_MAX_AGE_S, Runner, notice_line
from .tabs import tab

QUEUE_MAX_SIZE = 32
CONCURRENCY_LIMIT = MAX_BATCH_SIZE  # waiting requests share batches (kosmos2.serving)
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
SESSIONS_KEPT = 1000  # Gradio keeps each browser or API session's state (~0.5 MB here); its default is 10000
# Gradio hides "Use via API" in the footer of narrow screens and puts the example tables' text on one line;
# the page's own CSS shows the one and keeps the lines of the other
PAGE_CSS = (
    "@media (width <= 640px) { footer .show-api, footer .show-api-divider { display: flex !important; } }"
    ' td[data-testid^="dataset-cell"] div { white-space: pre-line !important; }'
)
HEADER = (
    "<h1>KOSMOS-2: grounding language in images</h1><p>Captions, phrase grounding, region descriptions and "
    "questions with boxes, by Microsoft's KOSMOS-2. Hover or tap a phrase or a box to see its partner.</p>"
    f"<style>{PAGE_CSS}</style>"
)


def build_demo(
    holder: ModelHolder | None = None,
    tasks: Mapping[str, Task] = TASKS,
    cache_examples: bool = False,
    load_now: bool = ZERO_GPU,
    preload: bool = False,
) -> gr.Blocks:
    """The demo's Blocks: a tab per group of ``tasks`` (by their ``tab``) and an API endpoint per task;
    ``cache_examples``: each example's result is computed once, lazily (see :func:`.tabs.tab`). The model
    loads here if ``load_now`` (on ZeroGPU: it must be in the main process, and on the GPU, before the
    forked calls), starts loading in the background if ``preload``, else loads on first use."""
    fix_mcp_tool_outputs()  # before any MCP server starts: python app.py --mcp, or GRADIO_MCP_SERVER on Spaces
    runner = Runner(holder or ModelHolder(), tasks)
    if load_now:
        runner.holder.get()
    elif preload:
        runner.holder.start()
    events = dict(concurrency_limit=CONCURRENCY_LIMIT, concurrency_id="kosmos2")
    cache = (OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)
    with gr.Blocks(title="KOSMOS-2: grounded multimodal demo", delete_cache=cache) as demo:
        gr.HTML(HEADER)
        # shown from the start (the page's first status line comes with its first update): its space is
        # kept, so the page does not move when the status line or the banner arrives
        banner = gr.HTML(value=notice_line("k2-loading", "⏳ Connecting…"), visible=True)
        tabs: dict[str, list[Task]] = {}
        for task in tasks.values():
            tabs.setdefault(task.tab, []).append(task)
        with gr.Tabs(overflow_behavior="wrap"):  # every tab in sight on a phone, not behind a menu
            for group in tabs.values():
                tab(runner, group, events, cache_examples)
        api_endpoints(runner, events)
        demo.load(runner.notices, None, banner, api_visibility="private", concurrency_limit=None)
    setattr(demo, MCP_NOTE, runner.mcp_note)
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


def main(argv: list[str] | None = None) -> int:
    """``python app.py [--tiny] [--checkpoint ...] [--host H] [--port P] [--share] [--mcp]``: serve the demo
    (local only unless ``--share``) until Ctrl-C or SIGTERM; returns the exit status. ``--port`` is that
    port or an error (without it, Gradio's: ``$GRADIO_SERVER_PORT`` or 7860, else the next free one); with
    ``--mcp`` the MCP server's URL is printed once it listens.

    A bad ``KOSMOS2_*`` setting, or a checkpoint named by ``--checkpoint`` or ``$KOSMOS2_CHECKPOINT`` that
    cannot be loaded, stops it before serving: one ``error:`` line, status 2. So a named checkpoint loads
    before the server starts; the default one loads on first use, or from start-up in the background with
    ``--preload`` and on Spaces (and falls back to the tiny one offline)."""
    parser = argparse.ArgumentParser(description="KOSMOS-2 Gradio demo")
    parser.add_argument("--tiny", action="store_true", help="use the built-in tiny random checkpoint")
    parser.add_argument("--checkpoint", help="checkpoint folder or hub id (default: $KOSMOS2_CHECKPOINT)")
    parser.add_argument(
        "--host",
        help="the address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help="the port (default: $GRADIO_SERVER_PORT or 7860, or the next free "
        "one); a given port that is taken is an error",
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument(
        "--mcp", action="store_true", help="also serve the tasks as MCP tools at /gradio_api/mcp/ (needs gradio[mcp])"
    )
    parser.add_argument(
        "--cache-examples",
        action="store_true",
        help="compute each example's result once, on first click (default on Spaces)",
    )
    parser.add_argument(
        "--preload", action="store_true", help="load the model at start-up, not on first use (default on Spaces)"
    )
    args = parser.parse_args(argv)
    try:
        holder = ModelHolder(args.checkpoint, force_tiny=args.tiny)
        if holder.explicit and holder.checkpoint != TINY_CHECKPOINT:
            holder.get()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    served = build_demo(holder, cache_examples=args.cache_examples or ON_SPACES, preload=args.preload or ON_SPACES)
    drop_stray_gradio_prints()
    try:
        with stop_on_signals():
            try:
                served.launch(
                    share=args.share,
                    max_file_size=MAX_UPLOAD_BYTES,
                    mcp_server=args.mcp or None,
                    state_session_capacity=SESSIONS_KEPT,
                    server_name=args.host,
                    server_port=args.port,
                    prevent_thread_lock=True,
                )
            except OSError as e:  # the port is taken, or the address is not this machine's
                print(
                    f"error: cannot listen on {args.host or '127.0.0.1'}:{args.port or 'the default port'} "
                    f"({e}); choose another --port or --host",
                    file=sys.stderr,
                )
                return 2
            if args.mcp:
                assert served.local_url is not None  # launch() has set it
                print(f"* MCP server (streamable HTTP): {served.local_url.rstrip('/')}/gradio_api/mcp/", flush=True)
            served.block_thread()
    except StopRequested:  # SIGTERM or Ctrl-C: Gradio's full shutdown (its cache), then the atexit clean-up
        served.close()
    return 0
