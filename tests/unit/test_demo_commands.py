"""The local commands' plumbing: `generate` to files, flag checks, and the signal handling that
keeps a terminal's Ctrl-C from killing the broker before the service has drained."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from stream_detector.cli import main
from stream_detector.config import InputConfig
from stream_detector.demo.scenario import WARMUP_TICKS, generator_config
from stream_detector.demo.signals import StopSignals, children_shielded
from stream_detector.engine.decode import Decoder
from stream_detector.scenarios.telemetry import mapping_for

pytestmark = pytest.mark.usefixtures("logging_left_as_found")


def test_generate_writes_a_feed_the_decoder_reads_and_its_labels(tmp_path: Path) -> None:
    out, labels = tmp_path / "feed.jsonl", tmp_path / "labels.json"
    code = main(
        ["generate", "--out", str(out), "--labels", str(labels), "--devices", "5", "--ticks",
         str(WARMUP_TICKS + 300), "--anomaly-rate", "20"]
    )
    assert code == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 5 * (WARMUP_TICKS + 300)
    decoded = Decoder(InputConfig(**mapping_for(generator_config(5)))).decode_messages(lines)
    assert not decoded.rejects and len(decoded.batch) == len(lines)
    injected = orjson.loads(labels.read_bytes())
    assert injected, "a high anomaly rate over 300 readings injects some"
    assert {a["key"] for a in injected} <= set(decoded.batch.keys)
    # Anomalies start only after the demo's anomaly-free warm-up stretch.
    assert min(a["start_ts"] for a in injected) >= decoded.batch.ts.min() + WARMUP_TICKS - 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--devices", "3"], "either --topic"),
        (["generate", "--topic", "t", "--out", "x.jsonl"], "either --topic"),
        (["demo", "--rate", "0"], "--rate"),
        (["demo", "--devices", "0"], "--devices"),
    ],
)
def test_bad_flags_exit_2_with_a_hint(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def _wait_for(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001 - test helper
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_first_signal_while_live_asks_to_stop_the_next_interrupts() -> None:
    with StopSignals().installed() as signals:
        signals.live = True
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(signals.stop.is_set)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)


def test_a_signal_during_set_up_interrupts_at_once() -> None:
    with StopSignals().installed():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(1.0)


def test_children_started_shielded_ignore_the_terminals_ctrl_c_but_not_sigterm() -> None:
    with children_shielded():
        child = subprocess.Popen(["sleep", "30"])
    try:
        os.kill(child.pid, signal.SIGINT)
        os.kill(child.pid, signal.SIGHUP)
        time.sleep(0.3)
        assert child.poll() is None
        # This process is not shielded any more: its own mask was restored.
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        child.terminate()
        assert child.wait(5) == -signal.SIGTERM
