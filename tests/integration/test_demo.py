"""The local commands as a newcomer runs them: `demo`, `broker` and `generate`, as subprocesses.

These use the embedded broker the commands start themselves (no Docker). Each checks that nothing
is left running afterwards by looking, in /proc, for any process still serving the broker's
listener: a broker orphaned by its parent would be re-parented, not gone.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from kafka_harness import read_topic

pytestmark = pytest.mark.integration


def _command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("stream-detector")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "stream_detector.cli"]
    return [*prefix, *args]


def _serving(bootstrap: str) -> list[int]:
    """Pids of live processes whose command line names the listener `tcp://<bootstrap>`."""
    needle = f"tcp://{bootstrap}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # exited while we looked
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def _summary(stdout: str) -> dict[str, Any]:
    last = stdout.strip().splitlines()[-1]
    return orjson.loads(last)["summary"]


class _Lines:
    """A child's output lines, read by a thread so that waiting for one can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, prefix: str, timeout: float) -> str:
        """The next line starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r} in {timeout}s; got {self.seen}")

    def rest(self) -> str:
        """Everything else the child wrote, once it has exited."""
        lines = []
        while (line := self._queue.get(timeout=10)) is not None:
            lines.append(line)
        return "".join(lines)


def test_demo_runs_detects_injected_anomalies_and_leaves_nothing_behind() -> None:
    done = subprocess.run(
        _command("demo", "--duration", "30", "--no-ui"),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(done.stdout)
    assert summary["service_exit_code"] == 0
    assert summary["events_processed"] == summary["events_produced"] > 0
    assert summary["alerts_opened"] > 0
    assert summary["detected"] > 0, "alerts must be produced for injected anomalies"
    # Loose bounds, well under what the bundled model does (about 0.8 to 0.9 on each): they
    # catch a demo that alerts at random or on nothing, not a model a little worse than usual.
    assert summary["recall"] >= 0.5 and summary["precision"] >= 0.5
    assert "Traceback" not in done.stderr
    assert _serving(summary["bootstrap"]) == []


def test_network_demo_alerts_for_the_injected_attacks_and_leaves_nothing_behind() -> None:
    # 30 s at x30: 15 minutes of event time after the backlog, one attack of each kind.
    done = subprocess.run(
        _command("demo", "--scenario", "network", "--duration", "30", "--no-ui"),
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(done.stdout)
    assert summary["scenario"] == "network" and summary["hosts"] == 40
    assert summary["service_exit_code"] == 0
    assert summary["events_processed"] == summary["events_produced"] > 0
    by_kind = summary["by_kind"]
    # The scanning and the flooding host are alerted on, and alerts are mostly for attacks.
    assert by_kind["port_scan"]["detected"] >= 1, by_kind
    assert by_kind["ddos_burst"]["detected"] >= 1, by_kind
    assert summary["precision"] >= 0.5
    alert_lines = [line for line in done.stdout.splitlines() if line.startswith("alert open ")]
    assert any("injected=port_scan" in line for line in alert_lines)
    assert any("injected=ddos_burst" in line for line in alert_lines)
    assert "Traceback" not in done.stderr
    assert _serving(summary["bootstrap"]) == []


def test_ctrl_c_stops_the_demo_in_order_with_a_summary() -> None:
    # A terminal's Ctrl-C goes to the whole foreground process group, the broker included.
    demo = subprocess.Popen(
        _command("demo", "--duration", "0", "--no-ui"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None and demo.stderr is not None
        lines, logs = _Lines(demo.stdout), _Lines(demo.stderr)
        bootstrap = lines.until("demo: broker ", timeout=90).split()[2].rstrip(",")
        lines.until("[", timeout=30)
        lines.until("[", timeout=30)  # a few seconds into the live feed
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(60)
        stdout, stderr = lines.rest(), logs.rest()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    summary = _summary(stdout)
    # The broker outlived the Ctrl-C, so the service finished what the feed had produced.
    assert summary["service_exit_code"] == 0
    assert summary["events_processed"] == summary["events_produced"] > 0
    assert _serving(bootstrap) == []


def test_broker_and_generate_feed_a_topic(tmp_path: Path) -> None:
    broker = subprocess.Popen(
        _command("broker"), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert broker.stdout is not None
        line = _Lines(broker.stdout).until("broker listening on ", timeout=60)
        bootstrap = line.split()[-1]
        labels = tmp_path / "labels.json"
        fed = subprocess.run(
            _command(
                "generate", "--topic", "telemetry", "--bootstrap-servers", bootstrap,
                "--devices", "10", "--ticks", "30", "--rate", "0", "--labels", str(labels),
            ),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert fed.returncode == 0, fed.stderr[-3000:]
        records = read_topic(bootstrap, "telemetry")
        assert len(records) == 300
        for record in records:
            assert record.key == record.json()["device_id"].encode()
        assert orjson.loads(labels.read_bytes()) == []  # 30 readings: still in the warm-up
        os.killpg(broker.pid, signal.SIGINT)
        assert broker.wait(30) == 0
    finally:
        if broker.poll() is None:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait()
    assert _serving(bootstrap) == []
