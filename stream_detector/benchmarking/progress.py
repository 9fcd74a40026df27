"""A clock on the service's progress, read from outside through its own /metrics endpoint.

`sd_events_processed_total` counts the events the detector has finished with, batch by batch; the
suite samples it over HTTP, as any monitoring would, so it needs nothing from inside the service.
Committed offsets would be a cruder clock: the service may commit less often than it processes
(after checkpoints, or after its output is acknowledged).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

_COUNTER = "sd_events_processed_total "


def _processed(url: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):  # not listening yet, or already stopped
        return None
    for line in text.splitlines():
        if line.startswith(_COUNTER):
            return float(line[len(_COUNTER) :])
    return None


class ProgressClock:
    """Samples (monotonic time, events processed) in a thread every `every_s` seconds.

    Each sample costs the service one small /metrics render in its HTTP thread; at 20 a second
    that is well under 1% of a core.
    """

    def __init__(self, port: int, every_s: float = 0.05) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-progress", daemon=True)

    def start(self) -> ProgressClock:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def processed(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def reached(self, events: int, timeout_s: float, alive: Callable[[], bool]) -> bool:
        """Wait until `events` are processed; False after `timeout_s`, or once `alive()` is
        false (the service stopped)."""
        deadline = time.monotonic() + timeout_s
        while self.processed() < events:
            if time.monotonic() > deadline or not alive():
                return self.processed() >= events
            time.sleep(self.every_s / 2)
        return True

    def span(self, start: int, end: int) -> tuple[float, float]:
        """(seconds, events) from the last sample before `start` to the first at or past `end`.

        Bracketing by samples outside the interval can only overstate its duration, by at most
        one sampling period at each end: a rate from it errs low, never high, and is never a
        division by zero when the whole interval fell between two samples.
        """
        samples = list(self.samples)
        first = next(i for i, (_, done) in enumerate(samples) if done >= start)
        last = next(i for i, (_, done) in enumerate(samples) if done >= end)
        (t0, done0), (t1, done1) = samples[max(first - 1, 0)], samples[last]
        return t1 - t0, done1 - done0

    def _run(self) -> None:
        while not self._stop.is_set():
            done = _processed(self.url)
            if done is not None:
                self.samples.append((time.monotonic(), done))
            self._stop.wait(self.every_s)
