"""The service's Prometheus metrics for aggregate mode: late events, aggregator keys, evictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from stream_detector.config import load_settings
from stream_detector.detector.artefact import TrainingResult, create_artefact
from stream_detector.detector.facade import Detector
from stream_detector.engine.model import LSTMAutoencoder
from stream_detector.kafka.telemetry import ServiceMetrics

T0 = 1_700_000_000.0


def _detector(late_policy: str) -> Detector:
    settings = load_settings(
        None,
        {
            "input": {"mode": "aggregate", "key_field": "src", "timestamp_field": "ts",
                      "value_fields": ["flows"]},
            "aggregate": {"bucket_width_s": 10.0, "allowed_lateness_s": 0.0, "idle_timeout_s": 10.0,
                          "late_policy": late_policy, "features": [{"name": "flows", "agg": "count"}]},
            "window": {"size": 2},
            "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
        },
    )
    model = LSTMAutoencoder(1, 2, hidden_size=4, num_layers=1, latent_size=2)
    artefact = create_artefact(model, settings, TrainingResult((0.0,), (1.0,), {}, 1.0, {}))
    return Detector(settings, artefact)


def _flows(*rows: tuple[str, float]) -> list[bytes]:
    return [orjson.dumps({"src": src, "ts": T0 + t}) for src, t in rows]


def _sample(metrics: ServiceMetrics, name: str, **labels: Any) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


@pytest.mark.parametrize(("policy", "other"), [("dead_letter", "drop"), ("drop", "dead_letter")])
def test_late_events_are_counted_per_batch_under_their_policy(policy: str, other: str) -> None:
    detector = _detector(policy)
    metrics = ServiceMetrics()
    batches = [
        _flows(("a", 1), ("b", 2), ("a", 25), ("a", 3)),  # the last is late: [0, 10) closed at 25
        _flows(("a", 4), ("b", 5), ("a", 26)),  # two late
        _flows(("a", 27)),  # none
    ]
    for payloads in batches:
        result = detector.process_messages(payloads, streams=np.zeros(len(payloads), dtype=np.int64))
        metrics.record_batch(len(payloads), result, detector, 0.01)
    assert _sample(metrics, "sd_late_events_total", policy=policy) == 3.0
    assert _sample(metrics, "sd_late_events_total", policy=other) == 0.0
    rejected = _sample(metrics, "sd_rejects_total", reason="late")
    assert rejected == (3.0 if policy == "dead_letter" else 0.0)


def test_aggregator_keys_and_evictions_follow_the_aggregators() -> None:
    detector = _detector("dead_letter")
    metrics = ServiceMetrics()
    first = _flows(("a", 1), ("b", 2), ("c", 3))
    metrics.record_batch(3, detector.process_messages(first, streams=np.array([0, 0, 1])), detector, 0.01)
    assert _sample(metrics, "sd_aggregate_keys") == 3.0
    # Only "a" speaks on, 40 s later: b goes past idle_timeout_s and is evicted; partition 1's
    # watermark has not moved, so c stays.
    later = _flows(("a", 45))
    metrics.record_batch(1, detector.process_messages(later, streams=np.array([0])), detector, 0.01)
    assert _sample(metrics, "sd_aggregate_keys") == 2.0
    assert _sample(metrics, "sd_aggregate_evictions_total") == 1.0
    # A partition handed away takes its keys along; counters never go down.
    detector.drop([], streams=[1])
    metrics.record_batch(0, detector.process_messages([], streams=np.array([], dtype=np.int64)),
                         detector, 0.01)
    assert _sample(metrics, "sd_aggregate_keys") == 1.0
    assert _sample(metrics, "sd_aggregate_evictions_total") == 1.0
