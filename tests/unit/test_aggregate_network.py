"""The network scenario generator: attacks as labelled, flows as a collector delivers them."""

from __future__ import annotations

import numpy as np
import pytest

from stream_detector.aggregate.decoder import AggregatingDecoder
from stream_detector.config import load_settings
from stream_detector.scenarios.flows import (
    NETWORK_ANOMALY_KINDS,
    NetworkConfig,
    NetworkFeed,
    generate,
    network_sections,
)

SMALL = NetworkConfig(hosts=12, duration_s=1500, warmup_s=500, anomalies=4, seed=5)


@pytest.fixture(scope="module")
def feed() -> NetworkFeed:
    return generate(SMALL)


def _flows_of(feed: NetworkFeed, key: str, start: float, end: float) -> np.ndarray:
    return (feed.src_ip == key) & (feed.ts >= start) & (feed.ts <= end)


def test_same_seed_same_feed_and_one_anomaly_of_each_kind(feed: NetworkFeed) -> None:
    again = generate(SMALL)
    assert feed.payloads(slice(0, 500)) == again.payloads(slice(0, 500))
    assert feed.anomalies == again.anomalies
    assert sorted(a.kind for a in feed.anomalies) == sorted(NETWORK_ANOMALY_KINDS)
    assert len({a.key for a in feed.anomalies}) == 4, "one attack per host while hosts suffice"
    assert all(a.start_ts >= SMALL.start_ts + SMALL.warmup_s for a in feed.anomalies)


def test_each_attack_changes_its_host_the_way_its_kind_says(feed: NetworkFeed) -> None:
    for anomaly in feed.anomalies:
        span = anomaly.end_ts - anomaly.start_ts
        during = _flows_of(feed, anomaly.key, anomaly.start_ts, anomaly.end_ts)
        before = _flows_of(feed, anomaly.key, SMALL.start_ts, SMALL.start_ts + SMALL.warmup_s)
        rate_before = before.sum() / SMALL.warmup_s
        if anomaly.kind == "host_silent":
            assert not during.any()
        elif anomaly.kind == "port_scan":
            assert len(np.unique(feed.dst_port[during])) > 5 * span
        elif anomaly.kind == "ddos_burst":
            assert during.sum() / span > 8 * rate_before
            assert np.median(feed.bytes[during]) < 130
        else:
            assert feed.bytes[during].sum() / span > 30 * feed.bytes[before].sum() / SMALL.warmup_s


def test_flows_arrive_slightly_out_of_order_and_a_few_very_late(feed: NetworkFeed) -> None:
    assert np.all((feed.ts >= SMALL.start_ts) & (feed.ts < SMALL.start_ts + SMALL.duration_s))
    behind = np.maximum.accumulate(feed.ts) - feed.ts
    assert np.mean(behind > 0) > 0.2, "out of order"
    assert np.mean(behind <= SMALL.jitter_s) > 0.99, "mostly within the arrival jitter"
    very_late = np.mean(behind > 60.0)
    assert 0 < very_late < 5 * SMALL.late_fraction


def test_network_sections_read_the_feed(feed: NetworkFeed) -> None:
    settings = load_settings(None, network_sections(SMALL))
    decoder = AggregatingDecoder(settings)
    out = decoder.decode_messages(feed.payloads())
    assert {r.reason for r in out.rejects} == {"late"}
    assert len(out.rejects) == decoder.aggregator.late_total
    assert set(out.batch.keys.tolist()) == set(feed.src_ip.tolist())
    scan = next(a for a in feed.anomalies if a.kind == "port_scan")
    in_scan = (out.batch.keys == scan.key) & (out.batch.ts > scan.start_ts + 10)
    in_scan &= out.batch.ts <= scan.end_ts
    ports = list(decoder.feature_names).index("dst_ports")
    assert out.batch.values[in_scan, ports].min() > 40, "a scan is ~100 ports per 10 s bucket"
    assert np.median(out.batch.values[~in_scan, ports]) < 6
