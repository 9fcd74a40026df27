"""The embedded broker dies with the process that started it, even when that process is SIGKILLed.

A demo killed with `kill -9` (or by the OOM killer) runs no cleanup, so only the kernel can take
the broker down with it; these tests kill a real parent and watch the real Tansu child.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stream_detector.demo.broker import listening, parent_death_guard

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")

# Starts the broker the way the demo does (main thread, group signals shielded), reports the
# broker's pid and port, then waits to be killed.
_PARENT = """
import sys
from stream_detector.demo.signals import children_shielded
from stream_detector.demo.broker import EmbeddedBroker

broker = EmbeddedBroker()
with children_shielded():
    broker.start()
print("BROKER", broker.pid, broker.port, flush=True)
sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (an orphan's zombie lingers where PID 1 of a
    container does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_broker_dies_when_its_parent_is_sigkilled() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    try:
        # Log lines come first on the same stdout.
        line = next(line for line in parent.stdout if line.startswith("BROKER "))
        _, pid_text, port_text = line.split()
        broker_pid, port = int(pid_text), int(port_text)
        assert _alive(broker_pid) and listening(port)

        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

        deadline = time.monotonic() + 5.0
        while (_alive(broker_pid) or listening(port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(broker_pid), "the broker outlived its SIGKILLed parent"
        assert not listening(port)
    finally:
        parent.kill()
        parent.wait()


def test_guard_is_given_on_the_main_thread_only() -> None:
    # The kernel signals when the forking *thread* ends: a guard set from a helper thread would
    # kill the broker as soon as that thread returned.
    assert parent_death_guard() is not None
    from_thread: list[object] = []
    helper = threading.Thread(target=lambda: from_thread.append(parent_death_guard()))
    helper.start()
    helper.join()
    assert from_thread == [None]

