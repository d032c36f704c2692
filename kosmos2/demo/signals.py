"""Stopping a long-running process cleanly: SIGTERM (``kill PID``, how Docker, systemd and Spaces stop a
process) and Ctrl-C go through the same shutdown, for the demo server and for ``label``."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived within :func:`stop_on_signals`; its message names the signal."""

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by this signal: 128 + its number (143 SIGTERM, 130 SIGINT)."""
        return 128 + signal.Signals[str(self)].value


class SignalGuard:
    """What :func:`stop_on_signals` gives: :meth:`deferred` holds a signal back for a block that must not be
    cut in two."""

    def __init__(self) -> None:
        self._deferring = 0
        self._pending: str | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._deferring:
            self._pending = name
            return
        raise StopRequested(name)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal arriving within the block raises :class:`StopRequested` when the block ends."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            if not self._deferring and self._pending is not None:
                name, self._pending = self._pending, None
                raise StopRequested(name)


@contextmanager
def stop_on_signals() -> Iterator[SignalGuard]:
    """Within the block, SIGTERM (``kill PID``: how Docker, systemd and Spaces stop a process) and SIGINT
    (Ctrl-C) raise :class:`StopRequested` in the main thread (held back within the guard's
    :meth:`~SignalGuard.deferred` blocks). Python's default for SIGTERM is to die at once, skipping every
    ``atexit`` clean-up; and Gradio's own Ctrl-C handling (``block_thread``) closes only the HTTP server,
    not the open pages' heartbeats, so the server's shutdown, which deletes Gradio's cached files, may not
    finish. Catch it and call ``Blocks.close()``. The previous handlers are put back on leaving. Call from
    the main thread."""
    guard = SignalGuard()
    previous = {number: signal.signal(number, guard.handle) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield guard
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
