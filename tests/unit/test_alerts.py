"""Alert record: ids, severity bands, feature contributions and the CloudEvents wire format."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import orjson
import pytest

from stream_detector.engine.alerts import (
    Alert,
    FeatureContribution,
    alert_id_for,
    episode_id_for,
    rfc3339,
    severity_for,
    top_contributions,
)


def make_alert(kind: str = "open") -> Alert:
    episode = episode_id_for("host-1", 1_700_000_100.5, "m-1")
    return Alert(
        kind=kind,  # type: ignore[arg-type]
        alert_id=alert_id_for(episode, kind),  # type: ignore[arg-type]
        episode_id=episode,
        key="host-1",
        window_start=1_700_000_000.0,
        window_end=1_700_000_100.5,
        score=4.5,
        threshold=1.5,
        severity="high",
        top_features=(FeatureContribution("cpu", 97.0, 40.0, 0.75),),
        model_version="m-1",
        episode_start=1_700_000_100.5,
        windows_over=2,
        event_index=17,
    )


@pytest.mark.parametrize(
    ("score", "threshold", "expected"),
    [
        (1.0, 1.0, "low"),
        (1.49, 1.0, "low"),
        (1.5, 1.0, "medium"),
        (2.99, 1.0, "medium"),
        (3.0, 1.0, "high"),
        (9.99, 1.0, "high"),
        (10.0, 1.0, "critical"),
        (1.0, 0.0, "critical"),
    ],
)
def test_severity_bands(score: float, threshold: float, expected: str) -> None:
    assert severity_for(score, threshold) == expected


def test_ids_are_deterministic_and_sensitive_to_each_part() -> None:
    base = episode_id_for("k", 10.0, "v1")
    assert base == episode_id_for("k", 10.0, "v1")
    assert len(base) == 32
    assert len({base, episode_id_for("k2", 10.0, "v1"), episode_id_for("k", 11.0, "v1"),
                episode_id_for("k", 10.0, "v2")}) == 4
    assert alert_id_for(base, "open") == alert_id_for(base, "open") != alert_id_for(base, "resolve")


def test_top_contributions_rank_and_share() -> None:
    names = ("a", "b", "c", "d")
    errors = np.array([1.0, 5.0, 1.0, 3.0], dtype=np.float32)
    actual = np.array([10.0, 20.0, 30.0, 40.0], dtype=np.float32)
    expected = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    top = top_contributions(names, errors, actual, expected, 3)
    assert [(f.name, f.actual, f.expected) for f in top] == [
        ("b", 20.0, 2.0),
        ("d", 40.0, 4.0),
        ("a", 10.0, 1.0),
    ]
    assert [f.error for f in top] == pytest.approx([0.5, 0.3, 0.1])
    zero = top_contributions(names, np.zeros(4), actual, expected, 2)
    assert [(f.name, f.error) for f in zero] == [("a", 0.0), ("b", 0.0)]


def test_to_dict_is_plain_json() -> None:
    data = make_alert().to_dict()
    cpu = {"name": "cpu", "actual": 97.0, "expected": 40.0, "error": 0.75}
    assert data["top_features"] == [cpu]
    assert data["event_index"] == 17
    assert orjson.loads(orjson.dumps(data)) == data


@pytest.mark.parametrize(("kind", "event_type"), [("open", "opened"), ("resolve", "resolved")])
def test_cloudevent_envelope(kind: str, event_type: str) -> None:
    alert = make_alert(kind)
    event = orjson.loads(alert.to_cloudevent("stream-detector/test"))
    assert event["specversion"] == "1.0"
    assert event["id"] == alert.alert_id
    assert event["source"] == "stream-detector/test"
    assert event["type"] == f"io.streamdetector.anomaly.{event_type}"
    assert event["subject"] == "host-1"
    assert event["datacontenttype"] == "application/json"
    assert event["time"] == "2023-11-14T22:15:00.500Z"
    assert datetime.fromisoformat(event["time"]).timestamp() == alert.window_end
    expected_data = alert.to_dict()
    del expected_data["event_index"]
    assert event["data"] == expected_data


def test_rfc3339_is_utc_with_z() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
