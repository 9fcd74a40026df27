"""`stream-detector retrain --from-topic` against a real broker: the recent events come from the
input topic and the episodes from the alerts on the alert topic (whichever model version raised
them, an open one running on, one whose open is gone starting at its episode start, another
producer's record skipped), the candidate is trained without their windows and `--register`
puts it into a directory registry with its retrain report."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from kafka_harness import T0, encode_event, settings_decoder, sine_feed, write_config
from test_feedback_command import SOURCE, _opened, _resolved

from stream_detector.cli import main
from stream_detector.config import load_settings
from stream_detector.detector.artefact import verify_artefact
from stream_detector.detector.exclusions import ExcludedSpans, Span
from stream_detector.detector.registry_dir import DirectoryRegistry
from stream_detector.detector.training import collect_windows
from stream_detector.engine.alerts import Alert

pytestmark = pytest.mark.integration

SHIFTED = "k01"
ANOMALY = (150, 200)  # steps (seconds after T0) of the level shift on SHIFTED
STEPS = 300


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """main() points structlog at this test's captured stderr, which must not outlive it."""
    yield
    structlog.reset_defaults()


def _published() -> tuple[list[Alert], list[Span]]:
    """The alerts on the alert topic (not of the active model), and the spans of their
    episodes."""
    anomaly = _opened(SHIFTED, T0 + ANOMALY[0] + 7, 3.0)  # its opening window starts with it
    still_open = _opened("k02", T0 + 287, 2.0)
    open_gone = _opened("k03", T0 + 20, 2.0)  # its open left with the retention
    alerts = [
        anomaly,
        _resolved(anomaly, T0 + ANOMALY[1] + 7, 3.0),
        still_open,
        _resolved(open_gone, T0 + 40, 2.0),
    ]
    spans = [
        (SHIFTED, T0 + ANOMALY[0], T0 + ANOMALY[1] + 7),
        ("k02", T0 + 280, math.inf),
        ("k03", T0 + 20, T0 + 40),
    ]
    return alerts, spans


def test_retrain_from_the_topics_leaves_the_published_episodes_out_and_registers(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    model_dir: Path,
    trained_sections: dict[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    input_topic = topic_factory("events", partitions=2)
    alert_topic = topic_factory("alerts", partitions=2)
    feed = sine_feed(4, STEPS, seed=2, shifted={SHIFTED: ANOMALY})
    produce_events(input_topic, feed)
    active = verify_artefact(model_dir).model_version
    alerts, spans = _published()
    produce_events(
        alert_topic,
        [(a.key.encode(), a.to_cloudevent(SOURCE)) for a in alerts] + [(None, b'{"other": 1}')],
    )
    registry_dir, out = tmp_path / "registry", tmp_path / "candidate"
    sections = {name: dict(values) for name, values in trained_sections.items()}
    sections["model"]["path"] = str(model_dir)
    sections["kafka"] = {
        "bootstrap_servers": kafka_bootstrap,
        "input_topics": [input_topic],
        "alert_topic": alert_topic,
    }
    sections["lifecycle"] = {"registry_dir": str(registry_dir)}
    config = write_config(tmp_path / "retrain.toml", sections)

    command = ["retrain", "--config", str(config), "--from-topic", "--out", str(out)]
    assert main([*command, "--register"]) == 0

    settings = load_settings(None, trained_sections)
    events = [settings_decoder(settings).decode_messages([encode_event(e)[1] for e in feed])]
    expected = collect_windows(events, settings, ExcludedSpans.from_pairs(spans)).n_excluded
    shifted = [(SHIFTED, T0 + ANOMALY[0], T0 + ANOMALY[1] - 1)]
    anomalous = collect_windows(events, settings, ExcludedSpans.from_pairs(shifted)).n_excluded
    training = verify_artefact(out).training
    assert training["events"] == len(feed)
    assert training["excluded_windows"] == expected > anomalous > 0

    [entry] = DirectoryRegistry(registry_dir).entries()
    candidate = verify_artefact(out).model_version
    assert (entry.version, entry.source, entry.parent) == (candidate, "retrain:topic", active)
    assert entry.data_span == (T0, T0 + STEPS - 1)
    report = entry.reports["retrain"]
    assert report["episodes"] == len(spans) and report["labelled_spans"] == 0
    assert report["excluded_windows"] == expected and report["parent"] == active
    captured = capsys.readouterr()
    assert f"of {len(spans)} episodes" in captured.out and f"registered {candidate}" in captured.out
    assert "warning: no alerts" not in captured.err
