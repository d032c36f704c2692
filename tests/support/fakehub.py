"""A tiny fake Hugging Face Hub HTTP server for tests (stdlib only).

It imitates just the endpoints that ``huggingface_hub`` 2.4.0 uses in
``snapshot_download`` and ``hf_hub_download`` over plain HTTP:

* ``GET  /api/models/{repo_id}[/revision/{revision}]`` -> repo info (``id``, ``sha``, ``siblings``)
* ``GET  /api/models/{repo_id}/tree/{revision}[/{path}]`` -> one page (no ``Link`` header) listing all files
* ``HEAD /{repo_id}/resolve/{revision}/{filename}`` -> ``X-Repo-Commit``, ``ETag``, ``Content-Length``
  (plus ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS-style files such as ``*.safetensors``)
* ``GET  /{repo_id}/resolve/{revision}/{filename}`` -> file bytes, with ``Range: bytes=N-[M]`` support

No redirects are issued (the HEAD answers 200 with the metadata itself) and no ``X-Xet-Hash``
header or ``xetHash`` tree field is ever sent, so huggingface_hub never hands a file to
``hf_xet`` even when it is installed: every byte goes through ``http_get``.
Errors carry the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``) that ``hf_raise_for_status`` maps to its exception classes.

Each repository is served from a local folder (read when the server starts). An optional
``bytes_per_second`` limit throttles file content; it is shared by all concurrent downloads,
so fetching N bytes in total takes about ``N / bytes_per_second`` seconds.

Use it in-process with ``snapshot_download(..., endpoint=hub.url)``, or set
``HF_ENDPOINT=hub.url`` in a subprocess's environment (it must be set before
huggingface_hub is imported there).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Files the Hub would store through git-lfs (a default .gitattributes covers these).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".gguf", ".npz")
REVISIONS = ("main",)  # branch names accepted besides the commit sha itself


@dataclass(frozen=True)
class _File:
    path: Path  # on disk
    size: int
    git_oid: str  # git blob sha1 of what git stores (the content, or the LFS pointer)
    sha256: str | None  # set for LFS files
    pointer_size: int | None


@dataclass(frozen=True)
class _Repo:
    sha: str
    files: dict[str, _File]  # repo path (posix) -> file


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _index_file(path: Path, name: str) -> _File:
    sha1, sha256, size = hashlib.sha1(), hashlib.sha256(), path.stat().st_size
    sha1.update(b"blob %d\0" % size)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha1.update(chunk)
            sha256.update(chunk)
    if not name.endswith(LFS_SUFFIXES):
        return _File(path, size, sha1.hexdigest(), None, None)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256.hexdigest()}\nsize {size}\n".encode()
    return _File(path, size, _git_blob_sha1(pointer), sha256.hexdigest(), len(pointer))


def _index_repo(repo_id: str, folder: Path) -> _Repo:
    files = {
        p.relative_to(folder).as_posix(): _index_file(p, p.name)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    commit = hashlib.sha1(repo_id.encode())
    for name, f in files.items():
        commit.update(f"\0{name}\0{f.git_oid}".encode())
    return _Repo(commit.hexdigest(), files)


class _Throttle:
    """Shared pacing: hands out send slots so the total rate stays under ``rate`` bytes/s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self, nbytes: int, rate: float, stop: threading.Event) -> None:
        with self._lock:
            start = max(time.monotonic(), self._next)
            self._next = start + nbytes / rate
            until = self._next
        stop.wait(max(0.0, until - time.monotonic()))


class FakeHub:
    """Serve ``repos`` (repo id -> local folder) like the Hub does. Use as a context manager."""

    def __init__(self, repos: dict[str, Path], bytes_per_second: float | None = None) -> None:
        self.repo_folders = {repo_id: Path(folder) for repo_id, folder in repos.items()}
        self.bytes_per_second = bytes_per_second  # may be changed while running
        self.requests: list[tuple[str, str]] = []  # (method, unquoted path without query), arrival order
        self.url = ""
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._throttle = _Throttle()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        self._repos = {repo_id: _index_repo(repo_id, folder) for repo_id, folder in self.repo_folders.items()}
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakehub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # aborts throttled transfers still running
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests -------------------------------------------------------------------
    def commit_sha(self, repo_id: str) -> str:
        """The (deterministic) commit id served for ``repo_id``; snapshot_download resolves files with it."""
        return self._repos[repo_id].sha

    def requested(self, method: str, suffix: str) -> list[int]:
        """Indexes in ``requests`` of the ``method`` requests whose path ends with ``suffix``."""
        with self._lock:
            return [i for i, (m, p) in enumerate(self.requests) if m == method and p.endswith(suffix)]

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        pass

    Handler.hub = hub
    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, so every response carries a Content-Length

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr logging
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # -- routing -----------------------------------------------------------------------------
    def _dispatch(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub._record(self.command, path)
        try:
            if path.startswith("/api/models/"):
                self._api(path[len("/api/models/"):], head)
            else:
                self._resolve(path[1:], head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-transfer

    def _find_repo(self, rest: str) -> tuple[str, _Repo, str] | None:
        """Split ``{repo_id}{tail}`` using the known repo ids (longest first)."""
        for repo_id in sorted(self.hub._repos, key=len, reverse=True):
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return repo_id, self.hub._repos[repo_id], rest[len(repo_id):]
        return None

    def _parts(self, rest: str, head: bool) -> tuple | None:
        """(repo id, repo, the kind of request, what follows it) for a path under a repo; else a 404 sent and None."""
        found = self._find_repo(rest)
        if found is None:
            self._error(404, "RepoNotFound", "Repository not found", head)
            return None
        repo_id, repo, tail = found
        kind, _, remainder = tail.lstrip("/").partition("/")
        return repo_id, repo, kind, remainder

    def _api(self, rest: str, head: bool) -> None:
        if (parts := self._parts(rest, head)) is None:
            return None
        repo_id, repo, kind, remainder = parts
        if kind in ("", "revision"):  # repo info; the revision may itself contain "/" (e.g. refs/pr/1)
            if kind and remainder not in (*REVISIONS, repo.sha):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {remainder}", head, repo.sha)
            siblings = [{"rfilename": name, "size": f.size, "blobId": f.git_oid} for name, f in repo.files.items()]
            info = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False, "siblings": siblings}
            return self._json(info, head)
        revision, _, sub = remainder.partition("/")
        if kind == "tree" and revision:
            if revision not in (*REVISIONS, repo.sha):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head, repo.sha)
            prefix = sub.strip("/") + "/" if sub.strip("/") else ""
            return self._json([_tree_entry(n, f) for n, f in repo.files.items() if n.startswith(prefix)], head)
        self._error(404, None, "Not found", head)

    def _resolve(self, rest: str, head: bool) -> None:
        if (parts := self._parts(rest, head)) is None:
            return None
        _, repo, kind, remainder = parts
        revision, _, filename = remainder.partition("/")
        if kind != "resolve" or not revision or not filename:
            return self._error(404, None, "Not found", head)
        if revision not in (*REVISIONS, repo.sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head, repo.sha)
        file = repo.files.get(filename)
        if file is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", head, repo.sha)
        byte_range = self._range(file.size)
        if byte_range is None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{file.size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end, partial = byte_range
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("ETag", f'"{file.git_oid}"')
        if file.sha256 is not None:
            self.send_header("X-Linked-Etag", f'"{file.sha256}"')
            self.send_header("X-Linked-Size", str(file.size))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{file.size}")
        self.end_headers()
        if not head:
            self._send_file(file.path, start, end - start + 1)

    # -- responses ---------------------------------------------------------------------------
    def _range(self, size: int) -> tuple[int, int, bool] | None:
        """(start, end inclusive, partial?) from a ``Range: bytes=N-[M]`` header; None if unsatisfiable."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match is None or match.groups() == ("", ""):
            return 0, size - 1, False  # no (or an unsupported) Range: the whole file
        first, last = match.groups()
        start = int(first) if first else max(0, size - int(last))
        end = min(int(last), size - 1) if first and last else size - 1
        return (start, end, True) if start <= end else None

    def _send_file(self, path: Path, offset: int, length: int) -> None:
        hub = self.hub
        with path.open("rb") as f:
            f.seek(offset)
            while length > 0 and not hub._stopping.is_set():
                rate = hub.bytes_per_second
                chunk = f.read(min(length, max(1024, int(rate / 20)) if rate else 1 << 20))
                if not chunk:
                    break
                if rate:
                    hub._throttle.wait(len(chunk), rate, hub._stopping)
                self.wfile.write(chunk)
                length -= len(chunk)
        if length > 0:
            self.close_connection = True

    def _json(self, payload: object, head: bool) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, head: bool, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code is not None:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit is not None:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _tree_entry(name: str, f: _File) -> dict[str, object]:
    entry: dict[str, object] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": name}
    if f.sha256 is not None:
        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
    return entry
