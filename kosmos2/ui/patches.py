"""Patches to Gradio 6.31: two stray prints of its own dropped from the server's output, and its MCP server's
tool answers fixed (one content item per output) and ended with the app's note."""

from __future__ import annotations

import builtins
import re
import sys
from typing import Any

# Lines gradio 6.31 prints with a bare print(), which say nothing to the person running the demo.
STRAY_GRADIO_LINES = (
    # gradio.routes, for every file of a custom component (the box annotator) that a page load fetches
    re.compile(r"id=\w+, environment=\w+, type=\w+, file_name=\S+"),
    # gradio.blocks, at launch: it points to an argument of launch(), but the demo's switch is --share
    re.compile(r"\* To create a public link, set `share=\w+` in `launch\(\)`\."),
)


def is_stray_gradio_line(text: str) -> bool:
    """Whether ``text`` (one printed line) is one of :data:`STRAY_GRADIO_LINES`."""
    return any(pattern.fullmatch(text) for pattern in STRAY_GRADIO_LINES)


def _print_unless_stray(
    *values: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
) -> None:
    """``print``, except that a stray line printed to stdout is dropped."""
    to_stdout = file is None or file is sys.stdout
    if to_stdout and is_stray_gradio_line((" " if sep is None else sep).join(map(str, values))):
        return
    builtins.print(*values, sep=sep, end=end, file=file, flush=flush)


def drop_stray_gradio_prints() -> None:
    """Drop :data:`STRAY_GRADIO_LINES` from what Gradio's ``routes`` and ``blocks`` modules print (their
    ``print`` becomes :func:`_print_unless_stray`); every other line, errors included, is printed as before."""
    import gradio.blocks
    import gradio.routes

    for module in (gradio.blocks, gradio.routes):
        module.print = _print_unless_stray  # type: ignore[attr-defined]  # a module global shadowing the builtin


MCP_NOTE = "kosmos2_mcp_note"  # a Blocks attribute: () -> a line to end each MCP tool answer with, or None


def fix_mcp_tool_outputs() -> None:
    """Make Gradio's MCP server give a tool with several outputs one content item per output, and end each
    answer with the served Blocks' note (its :data:`MCP_NOTE` attribute), if it has one.

    gradio 6.31, for a queued tool called without a progress token, wraps the client's list of outputs in
    one more list, so an MCP client gets a single text, the list's ``str`` (the annotated image as a
    path in it), instead of the caption, the entities and the image. With a progress token it is right.
    This unwraps exactly that shape (one item that is a list as long as the outputs). Idempotent.
    """
    from gradio.mcp import GradioMCPServer

    original = GradioMCPServer.pop_returned_state
    if getattr(original, "_kosmos2_unwraps", False):
        return
    original_content = GradioMCPServer.postprocess_output_data

    def pop_returned_state(components, data):
        if (
            len(components) > 1
            and isinstance(data, list)
            and len(data) == 1
            and isinstance(data[0], (list, tuple))
            and len(data[0]) == len(components)
        ):
            data = list(data[0])
        return original(components, data)

    def postprocess_output_data(self, data: Any, root_url: str) -> list:
        content = original_content(self, data, root_url)
        note = getattr(self.blocks, MCP_NOTE, None)
        line = note() if note else None
        return [*content, self.types.TextContent(type="text", text=line)] if line else content

    pop_returned_state._kosmos2_unwraps = True  # type: ignore[attr-defined]  # the marker that the patch is in
    GradioMCPServer.pop_returned_state = staticmethod(pop_returned_state)  # type: ignore[method-assign]  # the patch
    GradioMCPServer.postprocess_output_data = postprocess_output_data  # type: ignore[method-assign]  # the patch
