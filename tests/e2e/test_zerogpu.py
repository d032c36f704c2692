"""ZeroGPU's execution model, with a stand-in for the ``spaces`` package (``tests/support/standins/spaces``: a
fork per ``@spaces.GPU`` call, pickled arguments and results, a duration limit): the served app loads
the model once, in the main process at start-up; each call generates in its own child, without the
main process's batcher thread; results equal the normal path's; calls at once work; streaming works."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from gradio_client import Client, handle_file

from kosmos2.demo.loading import ModelHolder
from kosmos2.demo.generate import generate_each
from kosmos2.demo.settings import GenerationSettings
from kosmos2.demo.tasks import build_request
from launch import ROOT, STANDINS, serve_subprocess

CAT = ROOT / "assets" / "cat.jpg"


@pytest.fixture(scope="module")
def zero(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zerogpu")
    log = tmp / "gpu-calls.log"
    env = {"PYTHONPATH": str(STANDINS), "SPACES_ZERO_GPU": "true", "SPACES_STANDIN_LOG": str(log)}
    with serve_subprocess(tmp, env=env) as (url, proc):
        yield Client(url, verbose=False), log, tmp / "server.log"


def _expected(task: str, text: str | None = None, boxes=None, max_new_tokens: int = 6) -> str:
    loaded = ModelHolder(force_tiny=True).get()  # the same built-in tiny checkpoint (seed 0)
    return generate_each(loaded, [build_request(task, str(CAT), text, boxes)],
                         GenerationSettings(max_new_tokens=max_new_tokens))[0].caption


def test_api_calls_run_in_forked_children_on_the_model_loaded_once_at_start(zero):
    client, calls, server_log = zero
    assert "Model ready" in server_log.read_text()  # loaded before any request
    results = [client.predict(handle_file(str(CAT)), max_new_tokens=6, api_name="/caption")[0] for _ in range(3)]
    results.append(client.predict(handle_file(str(CAT)), "a cat", max_new_tokens=6, api_name="/ground")[0])
    assert server_log.read_text().count("Model ready") == 1  # no child loaded it again
    gpu_calls = calls.read_text().splitlines()
    assert len(gpu_calls) >= 4 and all(line.startswith(("caption", "ground")) for line in gpu_calls)
    assert results[:3] == [_expected("caption")] * 3 and results[3] == _expected("ground", "a cat")


def test_durations_grow_with_max_new_tokens(zero):
    client, calls, _ = zero
    before = len(calls.read_text().splitlines())
    for tokens in (4, 300):
        client.predict(handle_file(str(CAT)), max_new_tokens=tokens, api_name="/plain")
    short, long = (float(line.split()[1]) for line in calls.read_text().splitlines()[before:])
    assert 0 < short < long


def test_concurrent_calls_all_answer(zero):
    client, _, _ = zero
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(client.predict, handle_file(str(CAT)), max_new_tokens=6, api_name="/caption")
                for _ in range(4)]
        captions = [j.result(timeout=180)[0] for j in jobs]
    assert captions == [_expected("caption")] * 4


def test_a_streaming_call_after_the_main_process_used_the_model_still_streams(zero):
    """Endpoints are generators (they yield while decoding); the child's batcher starts its own worker."""
    client, _, _ = zero
    start = time.perf_counter()
    job = client.submit(handle_file(str(CAT)), max_new_tokens=6, api_name="/detailed")
    caption = job.result(timeout=120)[0]
    assert caption == _expected("detailed") and time.perf_counter() - start < 60
