"""Ctrl-C and friends for the local commands that start children and threads.

A terminal sends Ctrl-C (and SIGHUP when it closes) to its whole foreground process group. The
embedded broker is our child, so it would die at the same instant as the first key press and
leave the service draining towards a broker that is gone. `children_shielded` starts children
with those signals blocked, and `StopSignals` turns the first one this process gets into an
orderly stop: the command decides when the broker goes, last.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What a terminal sends to the whole process group; SIGTERM is addressed to one process.
_GROUP_SIGNALS: Final = {signal.SIGINT, signal.SIGHUP}


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class StopSignals:
    """While `live`, the first SIGINT/SIGTERM/SIGHUP sets `stop`; otherwise (during set-up, or a
    second time while stopping) it raises KeyboardInterrupt, and `finally` blocks clean up."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.live = False

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        # No logging here: the handler runs between two bytecodes of the main thread, which may be
        # holding the log writer's lock at that moment.
        if self.live and not self.stop.is_set():
            self.stop.set()
            return
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handlers can only be installed from the main thread; elsewhere this does nothing."""
        if not _on_main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextmanager
def children_shielded() -> Iterator[None]:
    """Children started inside inherit SIGINT/SIGHUP blocked: the mask survives fork and exec.

    A signal for this process arriving meanwhile stays pending and is handled when the block ends,
    so nothing is lost. SIGTERM stays deliverable, which is how the children are stopped.
    """
    if not _on_main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
