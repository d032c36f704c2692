"""The fake Hub (tests/support/fakehub.py) really serves huggingface_hub's downloads over plain HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import tqdm as hf_tqdm

from fakehub import FakeHub

REPO = "fake-org/tiny-model"


@pytest.fixture
def repo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "kosmos-2", "hidden": 8}))
    (folder / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0, "b": 1}}))
    (folder / "model.safetensors").write_bytes(os.urandom(300_000))
    (folder / "README.md").write_text("# not wanted\n")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_snapshot_download_allow_patterns_and_cache(repo_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    patterns = ["*.json", "*.safetensors"]
    with FakeHub({REPO: repo_folder, "other/repo": repo_folder}) as hub:
        path = Path(snapshot_download(REPO, allow_patterns=patterns, endpoint=hub.url, cache_dir=cache))
        sha = hub.commit_sha(REPO)
        assert path.name == sha and len(sha) == 40
        expected = {n: b for n, b in _files(repo_folder).items() if n != "README.md"}
        assert _files(path) == expected  # byte-identical, README.md filtered out
        assert hub.requested("GET", f"/{REPO}/resolve/{sha}/model.safetensors")
        assert not hub.requested("GET", "README.md")
        assert ("GET", f"/api/models/{REPO}/revision/main") in hub.requests
        n_requests = len(hub.requests)
        again = snapshot_download(REPO, allow_patterns=patterns, cache_dir=cache, local_files_only=True)
        assert Path(again) == path and _files(Path(again)) == expected
        assert len(hub.requests) == n_requests  # the cache answered, not the server
    # The LFS-style file is stored in the cache under its sha256, as with the real Hub.
    import hashlib

    blob = hashlib.sha256((repo_folder / "model.safetensors").read_bytes()).hexdigest()
    assert (cache / "models--fake-org--tiny-model" / "blobs" / blob).is_file()


def test_hf_hub_download_and_missing_entry(repo_folder: Path, tmp_path: Path) -> None:
    with FakeHub({REPO: repo_folder}) as hub:
        got = hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path / "c")
        assert Path(got).read_bytes() == (repo_folder / "config.json").read_bytes()
        with pytest.raises(EntryNotFoundError):
            hf_hub_download(REPO, "nope.bin", endpoint=hub.url, cache_dir=tmp_path / "c")


def test_range_request(repo_folder: Path) -> None:
    data = (repo_folder / "model.safetensors").read_bytes()
    with FakeHub({REPO: repo_folder}) as hub:
        req = urllib.request.Request(f"{hub.url}/{REPO}/resolve/main/model.safetensors", headers={"Range": "bytes=1000-"})
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
            assert resp.read() == data[1000:]
        head = urllib.request.Request(f"{hub.url}/{REPO}/resolve/main/model.safetensors", method="HEAD")
        with urllib.request.urlopen(head) as resp:
            assert resp.headers["X-Linked-Size"] == str(len(data))
            assert resp.headers["X-Repo-Commit"] == hub.commit_sha(REPO)
            assert "X-Xet-Hash" not in resp.headers  # => huggingface_hub never switches to hf_xet


def test_throttled_download_is_slow(repo_folder: Path, tmp_path: Path) -> None:
    with FakeHub({REPO: repo_folder}, bytes_per_second=200_000) as hub:
        t0 = time.monotonic()
        snapshot_download(REPO, allow_patterns=["model.safetensors"], endpoint=hub.url, cache_dir=tmp_path)
        elapsed = time.monotonic() - t0
    assert elapsed >= 1.0, elapsed  # 300 KB at 200 KB/s ~ 1.5 s
    assert elapsed < 10, elapsed


def test_unknown_repo_raises(repo_folder: Path, tmp_path: Path) -> None:
    with FakeHub({REPO: repo_folder}) as hub:
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download("fake-org/missing", endpoint=hub.url, cache_dir=tmp_path)
        assert hub.requests == [("GET", "/api/models/fake-org/missing/revision/main")]


class _Recorder(hf_tqdm):
    """Records update() amounts, times and disable flags per bar name."""

    updates: dict[str | None, list[float]] = defaultdict(list)
    times: dict[str | None, list[float]] = defaultdict(list)
    totals: dict[str | None, float | None] = {}
    disabled: dict[str | None, bool] = {}
    lock = threading.Lock()

    def __init__(self, *args, **kwargs) -> None:
        self.bar_name = kwargs.get("name")
        super().__init__(*args, **kwargs)
        _Recorder.disabled[self.bar_name] = self.disable

    def update(self, n: float | None = 1):  # type: ignore[override]
        with _Recorder.lock:  # called even when the bar is disabled (tqdm's own update returns early then)
            _Recorder.updates[self.bar_name].append(n or 0)
            _Recorder.times[self.bar_name].append(time.monotonic())
            _Recorder.totals[self.bar_name] = self.total
        return super().update(n)

    @classmethod
    def reset_records(cls) -> None:
        for record in (cls.updates, cls.times, cls.totals, cls.disabled):
            record.clear()


BYTES_BAR = "huggingface_hub.snapshot_download"


def test_tqdm_class_sees_all_bytes(repo_folder: Path, tmp_path: Path) -> None:
    _Recorder.reset_records()
    patterns = ["*.json", "*.safetensors"]
    with FakeHub({REPO: repo_folder}, bytes_per_second=1_000_000) as hub:
        snapshot_download(REPO, allow_patterns=patterns, endpoint=hub.url, cache_dir=tmp_path, tqdm_class=_Recorder)
    size = sum(len(b) for n, b in _files(repo_folder).items() if n != "README.md")
    assert sum(_Recorder.updates[BYTES_BAR]) == size
    assert _Recorder.totals[BYTES_BAR] == size
    assert sum(_Recorder.updates[BYTES_BAR + ".transfer"]) == size
    # Non-TTY (pytest captures stderr): the byte bars are created disabled, update() still runs.
    assert _Recorder.disabled[BYTES_BAR] is True
    # http_get reads in DOWNLOAD_CHUNK_SIZE (10 MiB) chunks: a smaller file is one update, at its end.
    assert sorted(_Recorder.updates[BYTES_BAR]) == sorted(len(b) for n, b in _files(repo_folder).items() if n != "README.md")


def test_progress_is_gradual_with_smaller_chunks(repo_folder: Path, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 32 * 1024)
    _Recorder.reset_records()
    with FakeHub({REPO: repo_folder}, bytes_per_second=400_000) as hub:
        snapshot_download(
            REPO, allow_patterns=["model.safetensors"], endpoint=hub.url, cache_dir=tmp_path, tqdm_class=_Recorder
        )
    updates, times = _Recorder.updates[BYTES_BAR], _Recorder.times[BYTES_BAR]
    assert sum(updates) == 300_000 and len(updates) >= 9
    assert times[-1] - times[0] >= 0.5  # spread over the ~0.75 s transfer


def test_hf_endpoint_in_subprocess(repo_folder: Path, tmp_path: Path) -> None:
    code = "from huggingface_hub import snapshot_download as s; print(s('%s', allow_patterns=['*.json']))" % REPO
    with FakeHub({REPO: repo_folder}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "c"), "HF_HUB_OFFLINE": "0"}
        env.pop("HF_HUB_DISABLE_XET", None)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tokenizer.json"]
