"""The Kafka service end to end against a real broker (see conftest.py for the fixtures).

Outcomes are checked against a reference: the same Detector run in-process over each partition's
records. Per-key state makes the detector's output per key independent of how keys interleave, and
the service settings below (stride 1, per-key statistics pinned to the training ones, the global
threshold throughout) make it independent of batch boundaries and of where a restarted instance
picks up, so the alert ids a service must deliver are known exactly.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from kafka_harness import (
    ServiceProcess,
    ServiceSetup,
    committed_offsets,
    create_topics,
    sine_feed,
    wait_until,
)

from stream_detector.config import load_settings
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.engine.types import REJECT_REASONS

pytestmark = pytest.mark.integration

N_KEYS = 20
ANOMALIES = {"k03": (120, 132), "k11": (150, 162), "k17": (180, 192)}
# History-independent scoring: every event scored, no per-key drift of statistics or threshold.
DETERMINISTIC = {
    "window": {"stride": 1},
    # No warm-up gate: how many events a key had at a batch's end would depend on batching.
    "normalize": {"prior_weight": 1e9, "warmup": 0},
    # The global threshold throughout, doubled: a margin over the tiny model's noise on normal keys.
    "threshold": {"warmup": 1_000_000, "global_factor": 2.0},
}
# The model is trained with the normalisation the service runs with.
TRAIN_NORMALIZE = DETERMINISTIC["normalize"]

AlertKey = tuple[str, str]  # (alert_id, kind)


def _settled(services: list[ServiceProcess], events: int) -> Callable[[], bool]:
    """True once the services consumed `events` in total and have nothing unacknowledged."""

    def check() -> bool:
        samples = [s.metrics() for s in services]
        consumed = sum(m.get("sd_events_in_total", 0) for m in samples)
        return consumed >= events and all(m["sd_produce_in_flight"] == 0 for m in samples)

    return check


def _alerts(records: list[Any]) -> list[dict[str, Any]]:
    out = []
    for record in records:
        event = record.json()
        assert event["specversion"] == "1.0" and event["id"] == event["data"]["alert_id"]
        assert record.key == event["data"]["key"].encode(), "alerts are keyed by the entity key"
        assert record.headers["content-type"].startswith(b"application/cloudevents+json")
        out.append({**event["data"], "partition": record.partition})
    return out


def _reference(
    setup: ServiceSetup, inputs: list[Any], start: dict[int, int] | None = None
) -> dict[AlertKey, tuple[int, int]]:
    """Alerts a fresh detector emits over each partition's records from `start` (default 0),
    mapped to the (partition, offset) of the input record that caused them."""
    settings = load_settings(None, _sections(setup))
    detector = Detector(settings, load_artefact(settings.model.path, settings))
    by_partition: dict[int, list[Any]] = defaultdict(list)
    for record in inputs:
        if record.offset >= (start or {}).get(record.partition, 0):
            by_partition[record.partition].append(record)
    expected: dict[AlertKey, tuple[int, int]] = {}
    for partition, records in sorted(by_partition.items()):
        result = detector.process_messages([r.value for r in records], [r.key for r in records])
        for alert in result.alerts:
            source = records[int(result.decoded.batch.index[alert.event_index])]
            expected[(alert.alert_id, alert.kind)] = (partition, source.offset)
    return expected


def _sections(setup: ServiceSetup) -> dict[str, dict[str, Any]]:
    sections = {name: dict(values) for name, values in setup.sections.items()}
    for name, values in DETERMINISTIC.items():
        sections.setdefault(name, {}).update(values)
    return sections


@pytest.fixture
def feed() -> list[dict[str, Any]]:
    return sine_feed(N_KEYS, 240, seed=7, shifted=ANOMALIES)


def test_injected_anomalies_alert_exactly_those_keys(
    start_service, service_setup, produce_events, consume_all, feed
) -> None:
    service = start_service(**DETERMINISTIC)
    produce_events(service_setup.input_topic, feed)
    wait_until(_settled([service], len(feed)), 60, "the feed to be processed")

    alerts = _alerts(consume_all(service_setup.alert_topic))
    opened = {a["key"] for a in alerts if a["kind"] == "open"}
    resolved = {a["key"] for a in alerts if a["kind"] == "resolve"}
    assert opened == resolved == set(ANOMALIES)
    episodes = defaultdict(set)
    for alert in alerts:
        episodes[alert["episode_id"]].add(alert["kind"])
    assert all(kinds == {"open", "resolve"} for kinds in episodes.values())
    # All alerts of one key share a partition (keyed production), and none is duplicated.
    assert all(len({a["partition"] for a in alerts if a["key"] == k}) == 1 for k in opened)
    expected = _reference(service_setup, consume_all(service_setup.input_topic))
    assert Counter((a["alert_id"], a["kind"]) for a in alerts) == Counter(set(expected))
    metrics = service.metrics()
    assert metrics["sd_alerts_total{kind=open}"] == len(ANOMALIES)
    assert metrics["sd_keys_tracked"] == N_KEYS
    assert metrics["sd_windows_scored_total"] == N_KEYS * (240 - 8 + 1)


def _malformed(ts: float) -> dict[str, tuple[bytes | None, bytes]]:
    """One record per reject reason decode can give; 'late' belongs to aggregate mode only."""
    return {
        "oversized": (b"k00", b'{"key": "k00", "ts": %f, "value": 1.0, "pad": "%s"}' % (ts, b"x" * 300)),
        "not_json": (b"k01", b"{this is not json"),
        "not_object": (b"k02", b"[1, 2, 3]"),
        "missing_key": (None, b'{"ts": %f, "value": 1.0}' % ts),
        "bad_key": (b"k04", b'{"key": [4], "ts": %f, "value": 1.0}' % ts),
        "missing_value": (b"k05", b'{"key": "k05", "ts": %f}' % ts),
        "non_numeric": (b"k06", b'{"key": "k06", "ts": %f, "value": "high"}' % ts),
        "non_finite": (b"k07", b'{"key": "k07", "ts": %f, "value": 1e39}' % ts),
        "bad_timestamp": (b"k08", b'{"key": "k08", "ts": "yesterday", "value": 1.0}'),
        "absurd_timestamp": (b"k09", b'{"key": "k09", "ts": -5.0, "value": 1.0}'),
    }


def test_malformed_input_goes_to_the_dead_letter_topic(
    start_service, service_setup, produce_events, consume_all
) -> None:
    good = sine_feed(4, 30, seed=3)
    bad = _malformed(good[0]["ts"])
    assert set(bad) == set(REJECT_REASONS) - {"late"}
    items: list[Any] = good[:60] + list(bad.values()) + good[60:]
    service = start_service(input={"max_message_bytes": 200})
    produce_events(service_setup.input_topic, items)
    wait_until(_settled([service], len(items)), 60, "the input to be processed")

    dead = consume_all(service_setup.dead_letter_topic)
    by_reason = {r.headers["reason"].decode(): r for r in dead}
    assert sorted(by_reason) == sorted(bad) and len(dead) == len(bad)
    inputs = {(r.partition, r.offset): r for r in consume_all(service_setup.input_topic)}
    for reason, (key, value) in bad.items():
        record = by_reason[reason]
        assert (record.key, record.value) == (key, value), "original bytes and key, untouched"
        assert record.headers["detail"], reason
        assert record.headers["source_topic"].decode() == service_setup.input_topic
        source = inputs[(int(record.headers["source_partition"]), int(record.headers["source_offset"]))]
        assert (source.key, source.value) == (key, value)
    metrics = service.metrics()
    assert metrics["sd_events_in_total"] == len(items)
    assert metrics["sd_events_in_total"] == metrics["sd_events_processed_total"] + len(dead)
    assert metrics["sd_dead_letters_total"] == len(dead)
    assert all(metrics[f"sd_rejects_total{{reason={reason}}}"] == 1 for reason in bad)


def test_sigkill_and_restart_delivers_every_alert_at_least_once(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap
) -> None:
    # More anomalies, spread out, so that alerts are in flight whenever the kill lands.
    anomalies = {f"k{i:02d}": (40 + 10 * i, 50 + 10 * i) for i in range(0, N_KEYS, 2)}
    feed = sine_feed(N_KEYS, 240, seed=11, shifted=anomalies)
    # Batches of 20: many commits in this small feed, so the kill lands between two of them.
    first = start_service(kafka={"batch_size": 20}, **DETERMINISTIC)
    produce_events(service_setup.input_topic, feed)
    wait_until(lambda: first.metrics()["sd_alerts_total{kind=open}"] >= 1, 60, "a first alert")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    committed = committed_offsets(kafka_bootstrap, service_setup.group_id, service_setup.input_topic)
    start_at = {p: max(o, 0) for p, o in committed.items()}
    assert sum(start_at.values()) < len(feed), "the kill should land mid-stream"

    second = start_service(**DETERMINISTIC)
    wait_until(_settled([second], len(feed) - sum(start_at.values())), 60, "the restart to catch up")

    inputs = consume_all(service_setup.input_topic)
    before_kill = _reference(service_setup, inputs)
    after_restart = _reference(service_setup, inputs, start_at)
    delivered = _alerts(consume_all(service_setup.alert_topic))
    ids = Counter((a["alert_id"], a["kind"]) for a in delivered)
    # Output of every committed input record was delivered before its offset was committed...
    committed_output = {
        alert for alert, (p, offset) in before_kill.items() if offset < start_at.get(p, 0)
    }
    assert committed_output <= set(ids)
    # ...and the restarted instance delivered all of its own.
    assert set(after_restart) <= set(ids)
    # Nothing else: re-deliveries repeat an alert the first instance would have sent, same id.
    assert set(ids) <= set(before_kill) | set(after_restart)
    assert {a["key"] for a in delivered if a["kind"] == "open"} <= set(anomalies)


def test_two_instances_share_partitions_and_cover_all_keys(
    start_service, service_setup, produce_events, consume_all, feed
) -> None:
    first = start_service(**DETERMINISTIC)
    second = start_service(**DETERMINISTIC)  # ready = it got partitions from the first
    produce_events(service_setup.input_topic, feed)
    wait_until(_settled([first, second], len(feed)), 60, "the feed to be processed")

    shares = [s.metrics()["sd_events_in_total"] for s in (first, second)]
    assert all(share > 0 for share in shares) and sum(shares) == len(feed)
    alerts = _alerts(consume_all(service_setup.alert_topic))
    assert {a["key"] for a in alerts if a["kind"] == "open"} == set(ANOMALIES)
    expected = _reference(service_setup, consume_all(service_setup.input_topic))
    assert Counter((a["alert_id"], a["kind"]) for a in alerts) == Counter(set(expected))


def test_sigterm_drains_commits_and_exits_zero(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap, feed
) -> None:
    timeout_s = service_setup.sections["kafka"]["shutdown_timeout_s"]
    # Batches of 40: this small feed is still being consumed when the SIGTERM comes.
    service = start_service(kafka={"batch_size": 40}, **DETERMINISTIC)
    produce_events(service_setup.input_topic, feed)
    wait_until(lambda: service.metrics()["sd_events_in_total"] > 0, 30, "consumption to start")
    started = time.monotonic()
    assert service.signal_and_wait(signal.SIGTERM, timeout=timeout_s + 5) == 0
    assert time.monotonic() - started < timeout_s

    stopped = [e for e in service.log_events() if e.get("event") == "service stopped"]
    assert len(stopped) == 1 and stopped[0]["drained"] is True
    committed = committed_offsets(kafka_bootstrap, service_setup.group_id, service_setup.input_topic)
    # Everything it consumed is committed: the input it saw ends exactly at the committed offsets.
    assert sum(max(o, 0) for o in committed.values()) == stopped[0]["events_in"]
    inputs = consume_all(service_setup.input_topic)
    expected = {
        alert
        for alert, (p, offset) in _reference(service_setup, inputs).items()
        if offset < committed.get(p, 0)
    }
    delivered = {(a["alert_id"], a["kind"]) for a in _alerts(consume_all(service_setup.alert_topic))}
    assert expected <= delivered


def test_sigterm_after_the_whole_input_commits_its_end(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap
) -> None:
    events = sine_feed(N_KEYS, 20, seed=5)
    service = start_service()
    produce_events(service_setup.input_topic, events)
    wait_until(_settled([service], len(events)), 60, "the input to be processed")
    assert service.signal_and_wait(signal.SIGTERM, timeout=20) == 0
    ends = Counter(r.partition for r in consume_all(service_setup.input_topic))
    committed = committed_offsets(kafka_bootstrap, service_setup.group_id, service_setup.input_topic)
    assert {p: o for p, o in committed.items() if p in ends} == dict(ends)


def test_exactly_once_commits_offsets_in_the_output_transaction(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap, feed
) -> None:
    service = start_service(
        kafka={"processing_guarantee": "exactly_once"}, state={"store": "none"}, **DETERMINISTIC
    )
    produce_events(service_setup.input_topic, feed)
    wait_until(_settled([service], len(feed)), 60, "the feed to be processed")

    inputs = consume_all(service_setup.input_topic)
    alerts = _alerts(consume_all(service_setup.alert_topic))
    assert Counter((a["alert_id"], a["kind"]) for a in alerts) == Counter(
        set(_reference(service_setup, inputs))
    )
    assert service.metrics()["sd_offset_commits_total"] > 0
    if not os.environ.get("SD_TEST_KAFKA_IMAGE"):
        return  # Tansu applies only the first offset commit of a transactional producer
    ends = Counter(r.partition for r in inputs)
    wait_until(
        lambda: committed_offsets(
            kafka_bootstrap, service_setup.group_id, service_setup.input_topic
        ) == dict(ends),
        10,
        "the last transaction's offsets",
    )


def test_broker_restart_under_the_service(
    start_service, service_setup, produce_events, consume_all, broker
) -> None:
    service = start_service(**DETERMINISTIC)
    before = sine_feed(N_KEYS, 160, seed=21)
    produce_events(service_setup.input_topic, before)
    wait_until(_settled([service], len(before)), 60, "the first part to be processed")

    broker.restart()  # Tansu keeps nothing: topics, offsets and the group are gone
    create_topics(broker.bootstrap_servers, [service_setup.input_topic], 4)
    create_topics(broker.bootstrap_servers, [service_setup.alert_topic], 2)
    create_topics(broker.bootstrap_servers, [service_setup.dead_letter_topic], 1)
    after = sine_feed(N_KEYS, 80, seed=22, first_step=160, shifted={"k05": (200, 212)})
    produce_events(service_setup.input_topic, after)

    def alerted() -> bool:
        alerts = _alerts(consume_all(service_setup.alert_topic, timeout=5))
        return {a["key"] for a in alerts if a["kind"] == "open"} == {"k05"}

    wait_until(alerted, 90, "an alert for an event sent after the restart")
    assert service.process.poll() is None, "the service must survive a broker restart"


def test_unreachable_broker_is_retried_until_stopped(start_service) -> None:
    from stream_detector.demo.broker import free_port

    service = start_service(wait=False, kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    wait_until(
        lambda: any(e.get("event") == "kafka broker unreachable; retrying" for e in service.log_events()),
        30,
        "the retry log line",
    )
    wait_until(lambda: _http_ok(service), 30, "the HTTP endpoints")
    assert service.get("/healthz")[0] == 200 and service.get("/readyz")[0] == 503
    assert service.signal_and_wait(signal.SIGTERM, timeout=15) == 0


def _http_ok(service: ServiceProcess) -> bool:
    try:
        return service.get("/healthz")[0] == 200
    except OSError:
        return False


def test_missing_topic_is_fatal_with_a_hint(start_service) -> None:
    service = start_service(wait=False, kafka={"alert_topic": "no-such-topic"})
    assert service.process.wait(60) == 1
    failures = [e for e in service.log_events() if e.get("event", "").startswith("service failed")]
    assert failures and "kafka.alert_topic" in failures[0]["error"]
