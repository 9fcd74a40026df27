"""Operator feedback through the real broker: false positives, mutes, restarts, rebalances.

Three keys see the same level shift again and again. After the first episode an operator marks
k03's alert a false positive and mutes k07 for a span covering the second shift. The service must
then stay silent on k03's repeats (the other keys still alert), publish nothing of k07's muted
episode and alert on k07 again once the mute is over, also when it is SIGKILLed at a random point
while the second part streams in and restarted; after another SIGKILL, two replicas that take
the partitions over between them must still hold the feedback; and a malformed feedback record
must reach the dead-letter topic with its reason (at least once). The service runs at its default
batching.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from kafka_harness import (
    T0,
    PacedProducer,
    ServiceProcess,
    ServiceSetup,
    input_committed,
    settled,
    sine_feed,
    wait_until,
)
from test_service import _alerts

from stream_detector.config import FeedbackConfig
from stream_detector.detector.feedback import alert_reference, feedback_envelope, parse_feedback
from stream_detector.engine.alerts import Alert

pytestmark = pytest.mark.integration

N_KEYS = 12
# Level shifts (event-time steps, [start, stop)) per key; every shift is the same pattern.
SHIFTS: dict[str, list[tuple[int, int]]] = {
    "k03": [(200, 210), (300, 310), (470, 480)],
    "k07": [(200, 210), (300, 310), (380, 390)],
    "k11": [(200, 210), (300, 310), (470, 480)],
}
MUTE = (T0 + 280.0, T0 + 340.0)  # covers the second shift only
PARTS = ((0, 260), (260, 420), (420, 560))
# The second part is paced over PACE_S seconds and the service SIGKILLed at a random point in
# [KILL_FROM, KILL_TO] x PACE_S of it (SD_KILL_SEED pins the draw).
PACE_S = 8.0
KILL_FROM, KILL_TO = 0.15, 0.85


def _feed(first: int, stop: int) -> list[dict[str, Any]]:
    events = sine_feed(N_KEYS, stop - first, seed=5, first_step=first)
    for event in events:
        step = event["ts"] - T0
        if any(a <= step < b for a, b in SHIFTS.get(event["key"], [])):
            event["value"] += 6.0
    return events


def _opens(alerts: list[dict[str, Any]], key: str, after: float = 0.0) -> list[dict[str, Any]]:
    return [
        a for a in alerts if a["key"] == key and a["kind"] == "open" and a["window_end"] >= after
    ]


def _false_positive(alerts: list[dict[str, Any]], key: str) -> bytes:
    """A false_positive on the key's first episode, as `stream-detector feedback fp` sends it."""
    episode = [a for a in alerts if a["key"] == key]
    opened = next(a for a in episode if a["kind"] == "open")
    resolved = [a["window_end"] for a in episode if a["kind"] == "resolve"]
    fields = {k: v for k, v in opened.items() if k in Alert.__dataclass_fields__}
    fields["top_features"] = ()
    alert = Alert(**{**fields, "event_index": 0})
    peak = max(a["score"] for a in episode)
    data = alert_reference(alert, peak, resolved[0] if resolved else None)
    return feedback_envelope("false_positive", uuid.uuid4().hex, "test", key, data, T0)


def _mute(pattern: str, start: float, until: float) -> bytes:
    data = {"pattern": pattern, "from": start, "until": until}
    return feedback_envelope("mute", uuid.uuid4().hex, "test", pattern, data, T0)


def test_feedback_holds_through_kills_and_rebalance(
    service_setup: ServiceSetup,
    start_service: Callable[..., ServiceProcess],
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    consume_all: Callable[..., list[Any]],
    kafka_bootstrap: str,
) -> None:
    topic = service_setup.input_topic
    feedback_topic = topic_factory("feedback", partitions=2)
    kafka = {"feedback_topic": feedback_topic}
    service = start_service(kafka=kafka)
    first = _feed(*PARTS[0])
    produce_events(service_setup.input_topic, first)
    wait_until(settled(service, len(first)), 60, "part one processed")
    alerts = _alerts(consume_all(service_setup.alert_topic))
    for key in SHIFTS:
        assert _opens(alerts, key), f"{key}'s first shift did not alert: {alerts}"

    # The operator's feedback, and one record that is not feedback at all.
    fp = _false_positive(alerts, "k03")
    parse_feedback(fp, FeedbackConfig())  # what the test sends is valid feedback
    produce_events(
        feedback_topic,
        [(b"k03", fp), (b"k07", _mute("k07", *MUTE)), (b"k03", fp), (b"junk", b"{not json")],
    )
    wait_until(
        lambda: service.metrics().get("sd_feedback_events_total{kind=mute}", 0) == 1
        and service.metrics().get("sd_feedback_events_total{kind=false_positive}", 0) == 1,
        30,
        "feedback applied",
    )
    metrics = service.metrics()
    assert metrics["sd_feedback_duplicates_total"] == 1, "the same event id twice is applied once"
    assert metrics["sd_feedback_rejected_total"] == 1

    # Part two streams in live; the service is killed somewhere in it and restarted at once.
    seed = int(os.environ.get("SD_KILL_SEED") or secrets.randbelow(2**31))
    kill_at = float(np.random.default_rng(seed).uniform(KILL_FROM, KILL_TO)) * PACE_S
    run = f"SD_KILL_SEED={seed}, kill at {kill_at:.2f} s of part two"
    print(run)
    second = _feed(*PARTS[1])
    producer = PacedProducer(kafka_bootstrap, topic, second, len(second) / PACE_S)
    producer.start()
    wait_until(
        lambda: time.monotonic() - producer.began >= kill_at or producer.error is not None,
        PACE_S + 30,
        f"the kill time ({run})",
    )
    assert producer.error is None, producer.error
    assert 0 < producer.sent < len(second), f"the kill lands mid-stream ({run})"
    # Whichever instance processed k07's muted shift counted it (the restart may process it again).
    muted_before_kill = service.metrics()["sd_muted_alerts_total"]
    service.signal_and_wait(signal.SIGKILL, 10)
    service = start_service(kafka=kafka)
    producer.join(PACE_S + 60)
    assert not producer.is_alive() and producer.error is None and not producer.failures, run
    assert len(consume_all(topic)) == len(first) + len(second), run
    wait_until(
        input_committed(kafka_bootstrap, service_setup, consume_all),
        90,
        f"every input offset of parts one and two committed after the restart ({run})",
    )
    assert service.metrics().get("sd_feedback_events_total{kind=false_positive}", 0) == 1, run
    alerts = _alerts(consume_all(service_setup.alert_topic))
    part_two = T0 + PARTS[1][0]
    assert not _opens(alerts, "k03", part_two), "k03's repeat alerted after a false_positive"
    assert _opens(alerts, "k11", part_two), "another key with the same pattern must still alert"
    muted = [a for a in alerts if a["key"] == "k07" and MUTE[0] <= a["episode_start"] < MUTE[1]]
    assert not muted, f"k07 alerted while muted: {muted}"
    assert _opens(alerts, "k07", MUTE[1]), "k07 must alert again once its mute is over"
    assert muted_before_kill + service.metrics()["sd_muted_alerts_total"] >= 1, run

    # The one bad record, dead-lettered at least once: the restarted replica, owning partition 0
    # again, dead-letters the bad records it read before (README, Operator feedback).
    dead = [r for r in consume_all(service_setup.dead_letter_topic) if r.headers.get("reason")]
    assert dead, "the malformed feedback record was not dead-lettered"
    where = dead[0].headers["source_offset"]
    assert {
        (r.headers["reason"], r.value, r.headers["source_topic"], r.headers["source_offset"])
        for r in dead
    } == {(b"bad_feedback", b"{not json", feedback_topic.encode(), where)}

    # SIGKILL, then two replicas share the partitions: each reads the feedback again.
    service.signal_and_wait(signal.SIGKILL, 10)
    replicas = [start_service(kafka=kafka), start_service(kafka=kafka)]
    third = _feed(*PARTS[2])
    produce_events(service_setup.input_topic, third)
    total = len(first) + len(second) + len(third)
    assert len(consume_all(topic)) == total
    wait_until(
        input_committed(kafka_bootstrap, service_setup, consume_all),
        90,
        "every input offset committed by the two replicas (at their checkpoints)",
    )
    for replica in replicas:
        assert replica.metrics().get("sd_feedback_events_total{kind=false_positive}", 0) == 1
    alerts = _alerts(consume_all(service_setup.alert_topic))
    part_three = T0 + PARTS[2][0]
    assert not _opens(alerts, "k03", part_three), "the false_positive did not survive the restart"
    assert _opens(alerts, "k11", part_three)
