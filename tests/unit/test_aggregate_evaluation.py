"""`evaluate` on raw-event files: the network scenario bucketed and labelled per key and time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_detector.config import load_settings
from stream_detector.demo.network import (
    NETWORK_ANOMALY_KINDS,
    NetworkConfig,
    labels_path_for,
    network_sections,
    write_scenario,
)
from stream_detector.evaluation.network import NORMAL_GROUP, load_raw_event_file

SMALL = NetworkConfig(hosts=12, duration_s=1500, warmup_s=500, anomalies=4, seed=5)


def test_raw_event_file_becomes_labelled_buckets_grouped_by_kind(tmp_path: Path) -> None:
    events = tmp_path / "net.jsonl"
    labels = write_scenario(events, SMALL)
    assert labels == labels_path_for(events) == tmp_path / "net.labels.json"
    ranges = orjson.loads(labels.read_bytes())
    settings = load_settings(None, network_sections(SMALL))
    dataset = load_raw_event_file(events, settings, train_fraction=0.3)

    assert dataset.feature_names == settings.input.value_fields
    groups = {c.key: c.group for c in dataset.channels}
    assert len(groups) == SMALL.hosts
    assert {groups[r["key"]] for r in ranges} == set(NETWORK_ANOMALY_KINDS)
    assert list(groups.values()).count(NORMAL_GROUP) == SMALL.hosts - len(ranges)
    for channel in dataset.channels:
        n = len(channel.train_ts) + len(channel.test_ts)
        assert len(channel.train_ts) == int(n * 0.3)
        assert channel.train_ts[-1] < channel.test_ts[0]
        mine = [r for r in ranges if r["key"] == channel.key]
        ends = np.concatenate([channel.train_ts, channel.test_ts])
        labels_of = np.concatenate([channel.train_labels, channel.test_labels])
        expected = np.zeros(n, dtype=bool)
        for r in mine:  # bucket [end - 10, end) overlaps [start_ts, end_ts]
            expected |= (ends > r["start_ts"]) & (ends - 10.0 <= r["end_ts"])
        assert np.array_equal(labels_of.astype(bool), expected)
        assert expected.any() == bool(mine)


def test_raw_event_file_needs_aggregate_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aggregate"):
        load_raw_event_file(tmp_path / "x.jsonl", load_settings(None, {}))
