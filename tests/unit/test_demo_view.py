"""The demo's two views render the same snapshot; the plain one ends with a parseable summary."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from rich.console import Console

from stream_detector.demo.monitor import ServiceNumbers
from stream_detector.demo.scoreboard import Score
from stream_detector.demo.view import (
    AlertLine,
    DemoInfo,
    PlainView,
    Snapshot,
    render,
    render_summary,
)

INFO = DemoInfo(
    bootstrap="127.0.0.1:1234",
    input_topic="demo.telemetry",
    alert_topic="demo.alerts",
    metrics_url="http://127.0.0.1:9/metrics",
    model_version="lstm-ae-0123456789ab",
    model_source="bundled",
    feed="200 devices at 2000 events/s",
    duration_s=60.0,
)


def open_alert(key: str, severity: str = "high") -> dict[str, Any]:
    return {
        "kind": "open",
        "alert_id": f"{key}-open",
        "key": key,
        "window_start": 1_700_000_100.0,
        "window_end": 1_700_000_131.0,
        "score": 0.61,
        "threshold": 0.088,
        "severity": severity,
        "top_features": [
            {"name": "metrics.humidity", "actual": 64.5, "expected": 52.2, "error": 0.8},
            {"name": "metrics.temperature", "actual": 19.7, "expected": 18.9, "error": 0.1},
        ],
    }


SCORE = Score(
    injected=10, detected=8, episodes=9, true_episodes=8, pending=2,
    by_kind={"spike": (3, 3), "stuck": (0, 2)},
)
SNAPSHOT = Snapshot(
    elapsed_s=12.0,
    events_per_s=2010.0,
    produced=50_000,
    service=ServiceNumbers(events_in=49_000, lag=120, keys=200, open_episodes=4, alerts_opened=9),
    score=SCORE,
    recent=(
        AlertLine(open_alert("device-0081"), "level_shift"),
        AlertLine(open_alert("device-0009"), None),
    ),
)
SUMMARY = {
    "elapsed_s": 60.0, "events_produced": 145_600, "events_processed": 145_600,
    "alerts_opened": 9, "alerts_resolved": 7, **SCORE.as_dict(),
}


def test_live_screen_shows_numbers_alerts_and_verdicts() -> None:
    console = Console(record=True, width=200)
    console.print(render(INFO, SNAPSHOT))
    text = console.export_text()
    for expected in ("2,010", "49,000", "120", "device-0081", "humidity 64.5 (exp 52.2)",
                     "level_shift", "false positive", "89%", "80%", "stuck", "0/2"):
        assert expected in text


def test_summary_panel() -> None:
    console = Console(record=True, width=120)
    console.print(render_summary(SUMMARY))
    text = console.export_text()
    assert "145,600" in text and "89%" in text and "80%" in text


def test_plain_view_prints_alerts_status_and_a_json_summary_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = PlainView()
    view.start(INFO)
    view.alert(SNAPSHOT.recent[0])
    view.update(SNAPSHOT)
    view.update(SNAPSHOT)  # within a few seconds of the last status line: not repeated
    view.finish(SUMMARY)
    lines = capsys.readouterr().out.splitlines()
    assert any("device-0081" in line and "injected=level_shift" in line for line in lines)
    assert sum(line.startswith("[") for line in lines) == 1
    assert orjson.loads(lines[-1]) == {"summary": orjson.loads(orjson.dumps(SUMMARY))}
