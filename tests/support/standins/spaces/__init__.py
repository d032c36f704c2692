"""A stand-in for Hugging Face's ``spaces`` package with ZeroGPU's execution model, for tests only.

As ``spaces/zero/wrappers.py`` does on ZeroGPU: each call of a ``@spaces.GPU`` function runs in a
process forked (``fork`` context) from the caller, so only the calling thread exists there and what
the child computes is lost when it ends; the arguments, the result and every yielded value cross a
pipe and must pickle; a call that runs past its ``duration`` (seconds, or a function of the call's
arguments) is stopped with an error. Each call appends a line to ``$SPACES_STANDIN_LOG`` (if set) so
that tests can count them.
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import pickle
from collections.abc import Callable
from typing import Any

_FORK = multiprocessing.get_context("fork")


def _child(fn: Callable, payload: bytes, conn: Any, generator: bool) -> None:
    try:
        args, kwargs = pickle.loads(payload)
        if generator:
            for value in fn(*args, **kwargs):
                conn.send_bytes(pickle.dumps(("yield", value)))
            conn.send_bytes(pickle.dumps(("end", None)))
        else:
            conn.send_bytes(pickle.dumps(("return", fn(*args, **kwargs))))
    except BaseException as e:  # noqa: BLE001 - the caller re-raises it, as spaces does
        conn.send_bytes(pickle.dumps(("error", e)))
    finally:
        conn.close()
        os._exit(0)


def _start(fn: Callable, args: tuple, kwargs: dict, duration: Any, generator: bool):
    seconds = duration(*args, **kwargs) if callable(duration) else duration
    log = os.environ.get("SPACES_STANDIN_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{fn.__name__} {seconds}\n")
    payload = pickle.dumps((args, kwargs))  # arguments must pickle
    receive, send = _FORK.Pipe(duplex=False)
    process = _FORK.Process(target=_child, args=(fn, payload, send, generator), daemon=True)
    process.start()
    send.close()
    return process, receive, seconds


def _next(process: Any, receive: Any, seconds: float) -> tuple[str, Any]:
    if not receive.poll(seconds):
        process.kill()
        raise RuntimeError(f"GPU task aborted: it ran past its duration of {seconds} s")
    return pickle.loads(receive.recv_bytes())


def GPU(fn: Callable | None = None, *, duration: Any = 60) -> Any:  # noqa: N802 - the real package's name
    """``@spaces.GPU`` or ``@spaces.GPU(duration=...)``."""
    if fn is None:
        return lambda f: GPU(f, duration=duration)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator_wrapper(*args: Any, **kwargs: Any):
            process, receive, seconds = _start(fn, args, kwargs, duration, True)
            try:
                while True:
                    kind, value = _next(process, receive, seconds)
                    if kind == "error":
                        raise value
                    if kind == "end":
                        return
                    yield value
            finally:
                process.kill()
                process.join()

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        process, receive, seconds = _start(fn, args, kwargs, duration, False)
        try:
            kind, value = _next(process, receive, seconds)
            if kind == "error":
                raise value
            return value
        finally:
            process.kill()
            process.join()

    return wrapper
