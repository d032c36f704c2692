"""Many people at once: concurrent clients each get the result a lone request gives, excess load is
turned away with a "queue is full, try again" error, and no request leaves state in module globals.

Nothing here depends on the machine's speed: states are awaited (never slept for), and every wait has
a deadline (``WAIT_S``) that only a hang reaches, and then fails with what it waited for."""

from __future__ import annotations

import collections
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import QueueError
from PIL import Image

from kosmos2.demo import loading
from kosmos2.demo.tasks import TASKS
from kosmos2.ui import server
from kosmos2.ui.runner import Runner, Submission
from launch import ROOT, serve
from labelling import split_scores

CLIENTS, REQUESTS = 8, 10
WAIT_S = 120  # deadline of every wait
SETTINGS = {"max_new_tokens": 6, "decoding": "greedy", "num_beams": 3, "temperature": 0.7, "top_p": 0.9,
            "no_repeat_ngram_size": 0}


def _requests(folder: Path) -> list[tuple[str, str, str, list]]:
    """CLIENTS x REQUESTS distinct (task, image, text, boxes): one image per client, every task."""
    rng = np.random.default_rng(0)
    out = []
    for c in range(CLIENTS):
        width, height = 60 + 37 * c, 40 + 23 * c
        path = folder / f"client{c}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        box = [[3 + c, 2, width // 2 + c, height - 3]]
        out += [
            ("caption", str(path), "", []),
            ("plain", str(path), "", []),
            ("detailed", str(path), "", []),
            ("ground", str(path), f"thing {c}\nthe sky", []),
            ("ground", str(path), f"a person number {c}", []),
            ("refer", str(path), "", box),
            ("ask", str(path), f"What is in picture {c}?", []),
            ("ask", str(path), f"What is [this part {c}] doing?", box),
            ("prompt", str(path), f"A photo of {c} things", []),
            ("prompt", str(path), f"The [left side {c}] shows", box),
        ]
    return out


def _mutable_globals() -> dict[str, str]:
    """The contents of every mutable container held in a global of the app's modules."""
    kinds = (dict, list, set, bytearray, collections.deque)
    modules = [m for name, m in list(sys.modules.items()) if name == "app" or name.split(".")[0] == "kosmos2"]
    return {f"{m.__name__}.{k}": repr(v) for m in modules for k, v in vars(m).items() if isinstance(v, kinds)}


@pytest.fixture(scope="module")
def holder():
    return loading.ModelHolder(force_tiny=True)


def _pixels(png: str) -> np.ndarray:
    return np.asarray(Image.open(png).convert("RGB"))


def test_concurrent_clients_get_exactly_their_own_results(holder, tmp_path):
    requests = _requests(tmp_path)
    lone = Runner(holder)  # each request alone, one after the other
    expected = []
    for task, image, text, boxes in requests:
        *_, (caption, entities, png) = lone.api(Submission(task, image, text, boxes, True, SETTINGS))
        expected.append((caption, entities, _pixels(png)))
    state_before = _mutable_globals()

    with serve(holder) as url:
        def one_client(c: int) -> list:
            client = Client(url, verbose=False)
            results = []
            for task, image, text, boxes in requests[c * REQUESTS:(c + 1) * REQUESTS]:
                spec = TASKS[task]  # each endpoint takes only its task's inputs
                inputs = {**({spec.text.lower(): text} if spec.text else {}),
                          **({"boxes": boxes} if spec.boxes != "none" else {})}
                job = client.submit(handle_file(image), **inputs, **SETTINGS, api_name=f"/{task}")
                results.append(job.result(timeout=WAIT_S))
            return results

        with ThreadPoolExecutor(CLIENTS) as pool:
            per_client = list(pool.map(one_client, range(CLIENTS)))

    got = [r for results in per_client for r in results]
    assert len(got) == CLIENTS * REQUESTS
    for (caption, entities, png), (want_caption, want_entities, want_pixels) in zip(got, expected):
        # batched with other users' rows: scores within the promise of docs/labelling.md ("Same numbers on every engine")
        (entities, scores), (want_entities, want_scores) = split_scores(entities), split_scores(want_entities)
        assert caption == want_caption and entities == want_entities
        assert scores == pytest.approx(want_scores, rel=1e-5, abs=0)
        assert np.array_equal(_pixels(png), want_pixels)
    assert _mutable_globals() == state_before  # no request left anything in a module global


def _wait_until(job, state: str, timeout: float = WAIT_S) -> None:
    """Poll ``job``'s status until it is ``state``; fail if the job ends or ``timeout`` s pass first."""
    deadline = time.monotonic() + timeout
    while (now := job.status().code.name) != state:
        assert not job.done(), f"the job ended ({now}) before reaching {state}: {job.exception()!r}"
        assert time.monotonic() < deadline, f"the job was still {now} after {timeout} s, never {state}"
        time.sleep(0.05)


def test_excess_load_is_turned_away_with_a_busy_error(holder, monkeypatch):
    monkeypatch.setattr(server, "QUEUE_MAX_SIZE", 2)
    decoder = holder.get().model.text_model.model
    release = threading.Event()
    original = decoder.forward

    def held(*args, **kwargs):  # every running request holds its worker until released
        # longer than the test's own waits, so that a failing wait reports first (and then releases)
        assert release.wait(2 * WAIT_S), f"the test did not release the workers in {2 * WAIT_S} s"
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", held)
    image = handle_file(str(ROOT / "assets" / "cat.jpg"))
    with serve(holder) as url:
        client = Client(url, verbose=False)

        def submit():
            return client.submit(image, max_new_tokens=2, api_name="/plain")

        # one at a time: a burst would pass through the 2-place queue before the workers take it
        running, queued = [], []
        try:
            for _ in range(server.CONCURRENCY_LIMIT):
                running.append(submit())
                _wait_until(running[-1], "ITERATING")  # the endpoints are generators (they can be stopped)
            for _ in range(server.QUEUE_MAX_SIZE):
                queued.append(submit())
                _wait_until(queued[-1], "IN_QUEUE")
            turned_away = [submit() for _ in range(3)]
            for job in turned_away:
                with pytest.raises(QueueError, match="Queue is full! Please try again."):
                    job.result(timeout=WAIT_S)
        finally:
            release.set()  # also when a check fails: the held workers must not outlive the test
        for job in [*running, *queued]:
            caption, _, _ = job.result(timeout=WAIT_S)
            assert caption.startswith("An image of")
        caption, _, _ = submit().result(timeout=WAIT_S)
        assert caption.startswith("An image of")
