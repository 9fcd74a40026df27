"""The aggregate-mode benchmark row at a tiny size: it measures what it says it measures."""

from __future__ import annotations

from stream_detector.benchmarking.aggregate import BUCKET_S, aggregate_row
from stream_detector.benchmarking.results import aggregate_id


def test_aggregate_row_times_raw_flows_through_buckets_and_windows() -> None:
    keys, events = 20, 2_000  # 100 s of flows: about ten 10 s buckets per key
    row = aggregate_row(keys, events=events, max_seconds=30.0, device="cpu", seed=1)
    assert row.id == aggregate_id(keys) and "K=20" in row.label
    data = row.data
    assert data["events"] == events, "every flow timed (the time limit is far)"
    assert row.events_per_s is not None and row.events_per_s > 0
    # Every source key closes a bucket about every BUCKET_S of flows, and the warmed windows
    # make each closed bucket a scored window.
    seconds_of_flows = events / keys
    assert keys * (seconds_of_flows / BUCKET_S - 1) <= data["buckets"] <= keys * seconds_of_flows / BUCKET_S
    assert data["windows"] == data["buckets"]
    assert 0 < data["decode_share"] < 1 and 0 < data["model_share"] < 1
