"""A cold start, as on a fresh Space: the default checkpoint comes from a hub (``tests/support/fakehub.py``, a local
stand-in serving the tiny checkpoint under the real model's id, slowly on purpose); the model loads at
start-up in the background (``--preload``), the status line says what is happening with the download's
progress, requests made meanwhile wait and then answer, and a failed load says why and is tried again.
The README's ``preload_from_hub`` names the checkpoint's files."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml

from fakehub import FakeHub
from kosmos2.demo.loading import DEFAULT_CHECKPOINT, ModelHolder
from kosmos2.hub import MODEL_FILES, PROCESSOR_FILES
from kosmos2.tiny import write_tiny_checkpoint
from kosmos2.ui import runner as ui_runner
from launch import ROOT, STANDINS, serve_subprocess

CHROMIUM = Path("/usr/bin/chromium")
RATE = 60_000  # bytes/s: the tiny checkpoint's 0.6 MB take about 10 s
SLOW = 8_000  # bytes/s: the browser test's download until its request is made
WEIGHTS = ("config.json", "generation_config.json", "model.safetensors")  # the download with progress
DOWNLOADING = re.compile(r"Downloading the model \(microsoft/kosmos-2-patch14-224\): (\d+) of (\d+) KB \((\d+) %")


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-repo")
    write_tiny_checkpoint(folder)
    return folder


@pytest.fixture
def hub_here(tmp_path, monkeypatch):
    """huggingface_hub in this process pointed at ``url`` (a fake hub), with an empty cache and 32 KiB
    reads (the stand-in's, see ``tests/support/standins/hubchunks``)."""
    def point(url: str) -> None:
        c = huggingface_hub.constants
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", c.HUGGINGFACE_CO_URL_TEMPLATE.replace(c.ENDPOINT, url))
        monkeypatch.setattr(c, "ENDPOINT", url)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setattr(c, "DOWNLOAD_CHUNK_SIZE", 32 * 1024)
    return point


def test_the_status_follows_a_slow_download_and_a_request_meanwhile_waits_for_the_model(tiny_repo, hub_here):
    with FakeHub({DEFAULT_CHECKPOINT: tiny_repo}, bytes_per_second=RATE) as hub:
        hub_here(hub.url)
        holder = ModelHolder()  # the default checkpoint, as on Spaces
        assert holder.status.stage == "waiting"
        holder.start()
        got: dict = {}
        request = threading.Thread(target=lambda: got.update(model=holder.get(), at=time.monotonic()))
        seen, deadline = [], time.monotonic() + 120
        while (status := holder.status).stage != "ready":
            assert status.stage != "failed", status.describe()
            assert time.monotonic() < deadline, f"still {status.describe()!r} after 120 s"
            seen.append((status.stage, status.done, status.total, status.describe(), time.monotonic()))
            if status.stage == "downloading" and status.done and request.ident is None:
                request.start()  # a request while the download runs
            time.sleep(0.05)
        ready_at = time.monotonic()
        request.join(timeout=60)
    stages = [s[0] for k, s in enumerate(seen) if k == 0 or s[0] != seen[k - 1][0]]
    order = iter(["loading", "downloading", "loading"])  # the last (reading the weights) may be too short to see
    assert "downloading" in stages and all(stage in order for stage in stages), stages
    partial = [s for s in seen if s[0] == "downloading" and 0 < s[1] < s[2]]
    assert len({s[1] for s in partial}) >= 3, "the download's progress was reported fewer than 3 times"
    assert max(s[2] for s in seen) == sum((tiny_repo / name).stat().st_size for name in WEIGHTS)
    done, total, share = map(int, DOWNLOADING.search(partial[-1][3]).groups())
    assert (done, total) == (round(partial[-1][1] / 1000), round(partial[-1][2] / 1000))
    assert share == round(100 * partial[-1][1] / partial[-1][2])
    assert got["model"] is holder.get() and not got["model"].is_tiny and got["model"].checkpoint == DEFAULT_CHECKPOINT
    assert got["at"] >= ready_at - 0.2  # the request waited for the load (it did not fail or load again)
    assert len(hub.requested("GET", "model.safetensors")) == 1


def test_a_failed_load_says_why_and_the_next_request_tries_again(tmp_path, tiny_repo, hub_here):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_repo.iterdir():
        if f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    with FakeHub({"someone/broken": broken}) as hub:
        hub_here(hub.url)
        holder = ModelHolder("someone/broken")  # named: no fallback
        holder.start()
        deadline = time.monotonic() + 60
        while holder.status.stage != "failed":
            assert holder.status.stage != "ready" and time.monotonic() < deadline, holder.status.describe()
            time.sleep(0.05)
        line = holder.status.describe()
        assert line.startswith("The model (someone/broken) could not be loaded: ") and "safetensors" in line
        assert line.endswith("The next request tries again.")
        looked_up = len(hub.requested("GET", "/revision/main"))
        with pytest.raises(Exception, match="safetensors"):
            holder.get()
        assert len(hub.requested("GET", "/revision/main")) > looked_up  # it asked the hub again


def test_the_readme_preloads_every_file_the_app_loads_from_the_checkpoint():
    front = yaml.safe_load(ROOT.joinpath("README.md").read_text().split("---")[1])
    (entry,) = front["preload_from_hub"]
    repo, files = entry.split()
    assert repo == DEFAULT_CHECKPOINT
    # the checkpoint's files as ../shared/SPEC.md lists them (weights, configurations, tokenizer), minus the
    # pickle twin and the sentencepiece model, which are never read
    assert set(files.split(",")) == {"config.json", "generation_config.json", "model.safetensors",
                                     "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                                     "special_tokens_map.json", "added_tokens.json"}
    assert all(any(fnmatch(f, p) for p in (*MODEL_FILES, *PROCESSOR_FILES)) for f in files.split(","))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")
def test_a_cold_start_in_the_browser_shows_the_download_and_answers_after_it(tmp_path, tiny_repo):
    from playwright.sync_api import expect, sync_playwright

    with FakeHub({DEFAULT_CHECKPOINT: tiny_repo}, bytes_per_second=SLOW) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
               "PYTHONPATH": str(STANDINS / "hubchunks")}
        with serve_subprocess(tmp_path, env=env, args=("--preload",)) as (url, _), sync_playwright() as p:
            deadline = time.monotonic() + 60
            while not hub.requested("GET", "model.safetensors"):  # the download begins with no visitor
                assert time.monotonic() < deadline, "nothing was downloaded before the first visit"
                time.sleep(0.1)
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                status = page.locator(".k2-loading")
                expect(status).to_contain_text("Downloading the model", timeout=20_000)
                first = DOWNLOADING.search(status.inner_text())
                (ROOT / "test-output").mkdir(exist_ok=True)
                page.screenshot(path=str(ROOT / "test-output" / "coldstart.png"))
                expect(status).not_to_contain_text(f"{first[1]} of", timeout=20_000)  # it moves on
                page.get_by_role("tab", name="Caption", exact=True).click()
                panel = page.locator("[role=tabpanel]:visible")
                panel.locator("table tbody tr").first.click()  # the cat example
                page.locator("#caption-image img").wait_for(timeout=10_000)
                page.locator("#caption-run").click()  # while the download runs: it waits for the model
                assert DOWNLOADING.search(status.inner_text()), "the download ended before the request"
                hub.bytes_per_second = RATE * 4  # the rest of it, quickly
                expect(status).to_be_hidden(timeout=60_000)
                expect(page.locator("#caption-png td.filename")).to_have_attribute(
                    "aria-label", re.compile(r"^kosmos2-"), timeout=60_000)
                assert page.locator("#caption-result .k2-caption").inner_text().startswith("An image of")
                assert page.locator("[data-testid=toast-body]").count() == 0
                assert page.get_by_text("tiny checkpoint with random weights").count() == 0  # the hub's model
            finally:
                browser.close()
        assert len(hub.requested("GET", "model.safetensors")) == 1


def test_offline_the_page_shows_the_load_then_the_tiny_fallback_banner(tmp_path, monkeypatch):
    monkeypatch.delenv("KOSMOS2_CHECKPOINT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    runner = ui_runner.Runner(ModelHolder())

    async def page_load() -> list[dict]:
        return [update async for update in runner.notices()]

    updates = asyncio.run(page_load())
    assert all("k2-loading" in u["value"] and u["visible"] for u in updates[:-1]) and len(updates) >= 2
    assert "tiny checkpoint with random weights" in updates[-1]["value"] and "k2-loading" not in updates[-1]["value"]
    again = asyncio.run(page_load())  # a later visitor: the banner at once
    assert len(again) == 1 and again[0]["value"] == updates[-1]["value"]


def test_an_unexpected_load_error_shows_no_internals_in_the_page(tmp_path, tiny_repo, monkeypatch):
    from kosmos2 import Kosmos2ForConditionalGeneration

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory at /secret/path/weights")

    monkeypatch.setattr(Kosmos2ForConditionalGeneration, "from_pretrained", broken)
    holder = ModelHolder(str(tiny_repo))
    with pytest.raises(RuntimeError, match="out of memory"):
        holder.get()
    assert holder.status.describe() == (f"The model ({tiny_repo}) could not be loaded: an internal error (see the "
                                        "server log). The next request tries again.")


def test_a_page_that_saw_the_load_fail_follows_the_next_attempt(tmp_path):
    folder = tmp_path / "checkpoint"
    runner = ui_runner.Runner(ModelHolder(str(folder)))  # not there yet: the page load's attempt fails

    async def watch() -> list[dict]:
        updates = []
        async for update in runner.notices():
            updates.append(update)
            if "could not be loaded" in update.get("value", "") and not folder.exists():
                write_tiny_checkpoint(folder)
                await asyncio.to_thread(runner.holder.get)  # a request: it tries again, and loads
        return updates

    updates = asyncio.run(asyncio.wait_for(watch(), timeout=120))
    failed = [u for u in updates if "could not be loaded" in u.get("value", "")]
    assert len(failed) == 1 and "Checkpoint folder not found" in failed[0]["value"]
    assert updates[-1] == {"__type__": "update", "visible": False}  # ready: no banner for this checkpoint
