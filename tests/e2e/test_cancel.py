"""An abandoned API request stops: a ``gradio_client`` job cancelled while it decodes (plain, batched
with another user's row, or beam search) stops its rows within a few decode steps, and the next
request runs at once. On the tiny checkpoint, served in this process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from kosmos2.serving import RowDecoder
from launch import ROOT, serve

CAT = ROOT / "assets" / "cat.jpg"
LONG = 512  # tokens a cancelled request asks for: far more than it gets to
STEP_S = 0.005  # each decode step made this much slower: the tiny model runs 512 steps in ~0.4 s, before a
# waiting test thread may even look, so a cancel could come after the end (seen with OMP_NUM_THREADS=1)


@pytest.fixture(scope="module")
def served():
    with serve() as url:
        yield Client(url, verbose=False)


@pytest.fixture
def steps(monkeypatch):
    """Decode steps run so far (calls of the serving decoder, each ``STEP_S`` slower), and the rows of each."""
    calls: list[int] = []
    call = RowDecoder.__call__

    def counted(self, sequences, attention_mask):
        calls.append(sequences.shape[0])
        time.sleep(STEP_S)
        return call(self, sequences, attention_mask)

    monkeypatch.setattr(RowDecoder, "__call__", counted)
    return calls


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s} s", pytrace=False)
        time.sleep(0.05)


def _settled(steps: list[int], quiet_s: float = 1.0, timeout_s: float = 20) -> int:
    """Wait until no decode step has run for ``quiet_s``; the number of steps then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = len(steps)
        time.sleep(quiet_s)
        if len(steps) == seen:
            return seen
    pytest.fail(f"decoding still going after {timeout_s} s", pytrace=False)


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_a_cancelled_request_stops_decoding_and_the_next_one_runs_at_once(served, steps, decoding):
    job = served.submit(handle_file(str(CAT)), max_new_tokens=LONG, decoding=decoding, num_beams=2,
                        no_repeat_ngram_size=0, api_name="/caption")
    _wait_for(lambda: len(steps) > 10, 60, "the long request did not start decoding")
    job.cancel()
    cancelled_at = len(steps)
    stopped = _settled(steps)
    assert stopped < LONG and stopped - cancelled_at < 100, (cancelled_at, stopped)
    start = time.perf_counter()
    caption, _, _ = served.predict(handle_file(str(CAT)), max_new_tokens=4, api_name="/caption")
    assert caption.startswith("An image of") and time.perf_counter() - start < 20


def test_cancelling_one_user_leaves_the_other_rows_of_its_batch(served, steps):
    kept = served.submit(handle_file(str(CAT)), max_new_tokens=40, api_name="/plain")
    dropped = served.submit(handle_file(str(CAT)), max_new_tokens=LONG, api_name="/caption")
    _wait_for(lambda: len(steps) > 5, 60, "the requests did not start decoding")
    dropped.cancel()
    caption, _, _ = kept.result(timeout=120)
    assert caption.startswith("An image of")
    assert _settled(steps) < LONG


def test_the_output_folder_prunes_the_servers_copies_of_its_files_too(tmp_path):
    """Gradio keeps a copy of each result file in its cache and, for generator endpoints, never deletes
    it: the output folder prunes those copies like its own files, and removes them at exit."""
    import os

    from PIL import Image

    from kosmos2.ui.outputs import OutputFolder

    cache = tmp_path / "cache"
    folder = OutputFolder(max_files=3, max_age_s=3600, copies=cache)
    for k in range(5):
        path = Path(folder.save(Image.new("RGB", (4, 4))))
        copy = cache / f"hash{k}" / path.name
        copy.parent.mkdir(parents=True)
        copy.write_bytes(path.read_bytes())
        age = 7200 if k < 3 else 10  # the first three older than max_age_s
        os.utime(copy, (time.time() - age, time.time() - age))
    other = cache / "other" / "someone-elses.png"
    other.parent.mkdir()
    other.write_bytes(b"x")
    folder.save(Image.new("RGB", (4, 4)))
    stranger = cache / "upload" / "kosmos2-someone-uploaded-this.png"  # not this folder's: kept
    stranger.parent.mkdir()
    stranger.write_bytes(b"x")
    folder.save(Image.new("RGB", (4, 4)))
    assert sorted(p.parent.name for p in cache.glob("hash*/kosmos2-*.png")) == ["hash3", "hash4"]
    folder.remove_copies()
    assert list(cache.glob("hash*/kosmos2-*.png")) == [] and other.exists() and stranger.exists()
