"""SIGTERM and SIGINT as an orderly stop for the long-running commands (`run`, `forward`).

An orchestrator stops a container with SIGTERM and a person with Ctrl-C; either should let the
command finish what it has in hand (drain, commit) rather than die mid-batch, so the signal only
sets an event that the command's loop watches.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import structlog

log = structlog.get_logger(__name__)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop` while inside; handlers can only be installed from the main
    thread, so elsewhere (a command run in a thread, as the demo runs the service) this does
    nothing and the caller's own `stop` is the way to end it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
