"""The tasks as MCP tools (Gradio's MCP server), driven by the ``mcp`` Python SDK as a real client over
streamable HTTP, on the tiny checkpoint."""

from __future__ import annotations

import ast
import asyncio
import base64

import pytest

from kosmos2.demo.loading import ModelHolder
from kosmos2.demo.tasks import TASKS
from launch import ROOT, import_app

CAT = ROOT / "assets" / "cat.jpg"


@pytest.fixture(scope="module")
def mcp_url():
    demo = import_app().build_demo(ModelHolder(force_tiny=True))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, mcp_server=True)
    try:
        yield f"{url.rstrip('/')}/gradio_api/mcp/"
    finally:
        demo.close()


async def _session(url: str, work):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        return await work(session)


def _run(url: str, work):
    return asyncio.run(asyncio.wait_for(_session(url, work), timeout=120))


def _image_url() -> str:
    return "data:image/jpeg;base64," + base64.b64encode(CAT.read_bytes()).decode("ascii")


def test_every_task_is_a_tool_with_its_parameters_documented(mcp_url):
    tools = {t.name: t for t in _run(mcp_url, lambda s: s.list_tools()).tools}
    assert set(TASKS) <= set(tools)
    detect = tools["detect"]
    assert detect.description.startswith("Detect every instance: Find every instance of each phrase")
    props = detect.inputSchema["properties"]
    assert {"image", "phrases", "threshold", "max_instances", "nms_iou", "candidates"} <= set(props)
    assert "Box threshold" in props["threshold"]["description"] and "0 to 1" in props["threshold"]["description"]
    assert props["max_instances"]["type"] == "integer"
    assert "max_new_tokens" in tools["caption"].inputSchema["properties"]
    assert "boxes" in tools["refer"].inputSchema["properties"] and "boxes" not in tools["caption"].inputSchema["properties"]


def _texts_and_images(result) -> tuple[list[str], list[str]]:
    assert not result.isError, result.content
    texts = [c.text for c in result.content if c.type == "text"]
    images = [c for c in result.content if c.type == "image"]
    return texts, images


def test_caption_and_detect_tools_answer_with_caption_entities_and_the_annotated_image(mcp_url):
    async def work(session):
        caption = await session.call_tool("caption", {"image": _image_url(), "max_new_tokens": 3})
        detect = await session.call_tool("detect", {"image": _image_url(), "phrases": "a cat", "threshold": 0.0,
                                                    "max_instances": 2})
        return caption, detect

    caption, detect = _run(mcp_url, work)
    texts, images = _texts_and_images(caption)
    assert texts[0].startswith("An image of") and images and images[0].mimeType == "image/png"
    assert "tiny checkpoint with random weights" in texts[-1], texts  # an MCP client sees no banner
    texts, images = _texts_and_images(detect)
    assert texts[0] == "a cat" and images
    (entity,) = ast.literal_eval(texts[1])  # Gradio writes a JSON output as Python text
    assert entity["phrase"] == "a cat" and 1 <= len(entity["boxes"]) <= 2
    assert len(entity["scores"]) == len(entity["boxes"]) and all(0 < s <= 1 for s in entity["scores"])
