"""Aggregate mode through the real broker: raw flow records in, alerts for the attackers out.

A small network feed (one port scanner, one flooding host, flows slightly out of order and a few
very late) goes through `stream-detector run` with input.mode = "aggregate". The service must
alert on exactly the alerts the same Detector raises in-process on the same messages: bucketing is
independent of batch boundaries by construction, and the settings below pin everything after it
(per-key statistics, the threshold) so that the model's verdict is too. The input topic has one
partition, so the in-process reference (one stream) judges lateness exactly as the service's
per-partition watermark does.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka_harness import committed_at, model_settings, partition_ends, settled, wait_until

from stream_detector.aggregate.decoder import AggregatingDecoder
from stream_detector.aggregate.streams import partition_stream
from stream_detector.config import Settings, deep_merge, load_settings
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.training import train
from stream_detector.scenarios.flows import NetworkConfig, NetworkFeed, generate, network_sections

pytestmark = pytest.mark.integration

# Training takes the attack-free first 900 s: one and a half daily cycles of 600 s.
FEED = NetworkConfig(
    hosts=10,
    duration_s=1800,
    day_s=600.0,
    warmup_s=900,
    anomalies=2,
    anomaly_kinds=("port_scan", "ddos_burst"),
    seed=3,
)
# Scoring that does not depend on batch boundaries: every bucket scored, statistics pinned to the
# training ones, and the global threshold throughout, x4: attacks score ~100x it, while the tiny
# model's error on normal hosts stays within a few times it. That threshold is the largest of
# only 164 validation windows, so the tiny model is fitted to every window (no trim): trimmed, it
# leaves its rarest normal windows unfit, the largest one scores 4x higher, and the ddos burst
# passes under x4 that.
SECTIONS: dict[str, dict[str, Any]] = {
    "window": {"size": 8, "stride": 1, "idle_ttl_s": 900.0},
    "normalize": {"warmup": 8, "prior_weight": 1e9},
    "threshold": {"warmup": 1_000_000, "global_factor": 4.0},
    "train": {"epochs": 15, "patience": 3, "stride": 1, "trim_fraction": 0.0},
}


def _sections() -> dict[str, dict[str, Any]]:
    """What the model and the service must agree on: the fixtures' model, this feed, SECTIONS."""
    return deep_merge(deep_merge(model_settings(), network_sections(FEED)), SECTIONS)


def _settings() -> Settings:
    return load_settings(None, _sections())


@pytest.fixture(scope="module")
def feed() -> NetworkFeed:
    return generate(FEED)


@pytest.fixture(scope="module")
def network_model(feed: NetworkFeed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on the feed's attack-free first part, as `train` would."""
    settings = _settings()
    normal = feed.ts < FEED.start_ts + FEED.warmup_s
    decoded = AggregatingDecoder(settings).decode_messages(feed.payloads(normal))
    out = tmp_path_factory.mktemp("network-model")
    train([decoded], settings, out)
    return out


def test_flows_in_alerts_for_scanner_and_flooder_out(
    feed: NetworkFeed,
    network_model: Path,
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    consume_all: Callable[..., list[Any]],
    start_service: Callable[..., Any],
    service_setup: Any,
) -> None:
    payloads = feed.payloads()
    attackers = {a.key: a.kind for a in feed.anomalies}
    assert sorted(attackers.values()) == ["ddos_burst", "port_scan"]

    # The reference: the same detector in-process, the whole feed in one call.
    settings = _settings()
    reference = Detector(settings, load_artefact(network_model, settings))
    expected = reference.process_messages(payloads)
    expected_alerts = {(a.alert_id, a.kind, a.key) for a in expected.alerts}
    late = [r.index for r in expected.decoded.rejects]
    assert {r.reason for r in expected.decoded.rejects} == {"late"} and late
    assert {key for _, kind, key in expected_alerts if kind == "open"} == set(attackers)

    flows = topic_factory("flows", partitions=1)
    sections = _sections()
    service = start_service(
        kafka={"input_topics": [flows]},
        model={"path": str(network_model)},
        **{name: sections[name] for name in ("input", "aggregate", "window", "normalize", "threshold")},
    )
    produce_events(flows, [(src.encode(), p) for src, p in zip(feed.src_ip, payloads, strict=True)])

    wait_until(settled(service, len(payloads)), 120.0, "the service to consume every flow")
    alerts = {
        (event["id"], event["data"]["kind"], event["data"]["key"])
        for event in (record.json() for record in consume_all(service_setup.alert_topic))
    }
    assert alerts == expected_alerts

    dead = consume_all(service_setup.dead_letter_topic)
    assert {record.headers["reason"] for record in dead} == {b"late"}
    assert sorted(record.value for record in dead) == sorted(payloads[i] for i in late)


def _alert_facts(alerts: Any) -> set[tuple[Any, ...]]:
    """What an alert says about the buckets behind it: the actual feature values of its window
    (bucket counts, sums, distinct counts), so a bucket lost or counted twice shows up here."""
    return {
        (
            a["alert_id"],
            a["kind"],
            a["key"],
            tuple(sorted((f["name"], round(f["actual"], 2)) for f in a["top_features"])),
        )
        for a in alerts
    }


def _checkpoint_offsets(service: Any) -> dict[int, int]:
    """The latest checkpointed offset per partition (logged as "topic:partition@offset")."""
    latest: dict[int, int] = {}
    for event in service.log_events():
        if event.get("event") == "checkpoint written":
            for entry in event["partitions"]:
                where, offset = entry.rsplit("@", 1)
                partition = int(where.rsplit(":", 1)[1])
                latest[partition] = max(latest.get(partition, 0), int(offset))
    return latest


def test_sigkill_restart_keeps_open_buckets_and_watermarks(
    feed: NetworkFeed,
    network_model: Path,
    topic_factory: Callable[..., str],
    produce_events: Callable[..., None],
    consume_all: Callable[..., list[Any]],
    start_service: Callable[..., Any],
    service_setup: Any,
    tmp_path: Path,
) -> None:
    """Killed just after checkpointing in the middle of an attack, restarted from the local
    store: each partition resumes with its open buckets (the attacker's among them), watermark
    and idling keys, so the alerts, with the feature values of their windows, and the late flows
    are those of an uninterrupted run: no bucket lost or counted twice."""
    payloads = feed.payloads()
    flows = topic_factory("flows", partitions=2)
    sections = _sections()
    state = {"store": "local", "dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.3}
    overrides = {
        "kafka": {"input_topics": [flows]},
        "model": {"path": str(network_model)},
        "state": state,
        **{name: sections[name] for name in ("input", "aggregate", "window", "normalize", "threshold")},
    }
    items = [(src.encode(), p) for src, p in zip(feed.src_ip, payloads, strict=True)]
    # The cut falls 15 s into the first attack: the attacker's bucket is open at the checkpoint,
    # and the alert that opens on it reports that bucket's values.
    cut_ts = min(a.start_ts for a in feed.anomalies) + 15.0
    cut = int(np.searchsorted(np.maximum.accumulate(feed.ts), cut_ts))

    first = start_service(**overrides)
    produce_events(flows, items[:cut])
    head = consume_all(flows)
    head_ends = {p: max(r.offset for r in head if r.partition == p) + 1 for p in (0, 1)}
    wait_until(
        lambda: _checkpoint_offsets(first) == head_ends,
        120.0,
        "a checkpoint of both partitions at the end of the first part",
    )
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    second = start_service(**overrides)
    produce_events(flows, items[cut:])
    records = consume_all(flows)
    assert len(records) == len(payloads)
    ends = partition_ends(records)
    assert set(ends) == {0, 1}
    bootstrap = service_setup.sections["kafka"]["bootstrap_servers"]
    wait_until(
        lambda: committed_at(bootstrap, service_setup.group_id, flows, ends),
        180.0,
        "the restarted instance to consume and commit everything",
    )
    restored = {
        e["partition"]: e["offset"]
        for e in second.log_events()
        if e.get("event") == "partition state restored"
    }
    assert restored == head_ends, "both partitions resume from their checkpoint"

    # The uninterrupted run: one detector, each partition a stream of its own, as consumed.
    settings = _settings()
    reference = Detector(settings, load_artefact(network_model, settings))
    expected = reference.process_messages(
        [r.value for r in records],
        streams=[partition_stream(r.topic, r.partition) for r in records],
    )
    want = _alert_facts(orjson.loads(a.to_cloudevent("x"))["data"] for a in expected.alerts)
    assert {key for _, kind, key, _ in want if kind == "open"} == {a.key for a in feed.anomalies}
    got = _alert_facts(record.json()["data"] for record in consume_all(service_setup.alert_topic))
    assert got == want

    late = {records[r.index].value for r in expected.decoded.rejects}
    dead = consume_all(service_setup.dead_letter_topic)
    assert {record.value for record in dead} == late, "late flows: each partition judged alone"
