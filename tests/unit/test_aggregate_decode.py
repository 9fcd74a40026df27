"""Aggregate-mode decoding: raw messages in, closed buckets and rejects (late included) out."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import orjson
import pytest

from stream_detector.aggregate.decoder import AggregatingDecoder, decoder_for
from stream_detector.aggregate.streams import partition_stream
from stream_detector.config import ConfigError, Settings, load_settings
from stream_detector.detector.artefact import TrainingResult, create_artefact
from stream_detector.detector.facade import Detector
from stream_detector.engine.decode import Decoder
from stream_detector.engine.model import LSTMAutoencoder

T0 = 1_700_000_000.0
FEATURES = [
    {"name": "flows", "agg": "count"},
    {"name": "bytes", "agg": "sum", "field": "bytes"},
    {"name": "peak", "agg": "max", "field": "bytes"},
    {"name": "ports", "agg": "distinct", "field": "dst.port"},
]


def _settings(**sections: dict[str, Any]) -> Settings:
    features = sections.get("aggregate", {}).get("features", FEATURES)
    base = {
        "input": {
            "mode": "aggregate",
            "key_field": "src",
            "timestamp_field": "ts",
            "value_fields": [f["name"] for f in features],
        },
        "aggregate": {
            "bucket_width_s": 10.0,
            "allowed_lateness_s": 2.0,
            "idle_timeout_s": 0.0,
            "features": features,
        },
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(None, base)


def _flow(src: str, t: float, size: Any = 100, port: Any = 443, **extra: Any) -> bytes:
    return orjson.dumps({"src": src, "ts": T0 + t, "bytes": size, "dst": {"port": port}, **extra})


def test_closed_buckets_come_out_as_events_with_the_configured_features() -> None:
    decoder = AggregatingDecoder(_settings())
    first = decoder.decode_messages([_flow("a", 1, 100, 22), _flow("a", 3, 300, 80)])
    assert len(first.batch) == 0, "the bucket is still open"
    out = decoder.decode_messages([_flow("a", 5, 50, 80), _flow("b", 14, 7, 1)])
    assert out.batch.keys.tolist() == ["a"]
    assert out.batch.ts.tolist() == [T0 + 10.0]
    flows, total, peak, ports = out.batch.values[0].tolist()
    assert (flows, total, peak) == (3.0, 450.0, 300.0)
    assert round(ports) == 2
    assert out.batch.index.tolist() == [1], "the message whose event time closed the bucket"
    assert decoder.feature_names == ("flows", "bytes", "peak", "ports")


def test_bad_records_are_refused_as_in_events_mode_and_absent_distinct_values_are_not() -> None:
    decoder = AggregatingDecoder(_settings())
    payloads = [
        b"{not json",
        orjson.dumps({"ts": T0, "bytes": 1}),  # no key
        _flow("a", 1, size="lots"),
        _flow("a", 2, port=None),  # no port: still a flow, just no port to count
        orjson.dumps({"src": "a", "ts": T0 + 3, "bytes": 5}),  # no dst object at all
        _flow("a", 30),  # closes a's first bucket
    ]
    out = decoder.decode_messages(payloads)
    assert [(r.index, r.reason) for r in out.rejects] == [
        (0, "not_json"),
        (1, "missing_key"),
        (2, "non_numeric"),
    ]
    flows, total, _, ports = out.batch.values[0].tolist()
    assert (flows, total, ports) == (2.0, 105.0, 0.0)


@pytest.mark.parametrize("policy", ["dead_letter", "drop"])
def test_late_events_are_dead_lettered_or_dropped_and_always_counted(policy: str) -> None:
    decoder = AggregatingDecoder(_settings(aggregate={"late_policy": policy}))
    bad_time = orjson.dumps({"src": "x", "ts": "soon", "bytes": 1})
    out = decoder.decode_messages(
        [_flow("a", 1), _flow("a", 25), _flow("a", 9.5), _flow("b", 21), bad_time]
    )
    # The event at 25 s moved the watermark to 23 s: bucket [0, 10) had closed before 9.5 s came.
    assert decoder.aggregator.late_total == 1
    reasons = [(r.index, r.reason) for r in out.rejects]
    if policy == "dead_letter":
        assert reasons == [(2, "late"), (4, "bad_timestamp")]
        assert "allowed_lateness_s=2" in out.rejects[0].detail
    else:
        assert reasons == [(4, "bad_timestamp")]
    assert out.batch.keys.tolist() == ["a"]
    assert out.batch.values[0, 0] == 1.0, "the late flow joined no bucket"


def test_csv_columns_and_json_messages_give_the_same_buckets() -> None:
    rows = [("a", 1, 10, 22), ("b", 2, 20, 22), ("a", 4, 30, 23), ("a", 13, 40, 22), ("b", 31, 1, 1)]
    from_json = AggregatingDecoder(_settings()).decode_messages(
        [_flow(src, t, size, port) for src, t, size, port in rows]
    )
    columns = {
        "src": [r[0] for r in rows],
        "ts": [str(T0 + r[1]) for r in rows],
        "bytes": [str(r[2]) for r in rows],
        "dst.port": [str(r[3]) for r in rows],
    }
    from_csv = AggregatingDecoder(_settings()).decode_columns(columns)
    assert from_json.batch.keys.tolist() == from_csv.batch.keys.tolist()
    assert sorted(zip(from_json.batch.ts - T0, from_json.batch.keys)) == [
        (10.0, "a"), (10.0, "b"), (20.0, "a")
    ]
    assert np.array_equal(from_json.batch.values, from_csv.batch.values)
    assert np.array_equal(from_json.batch.ts, from_csv.batch.ts)


def test_kafka_keys_broker_times_and_features_without_numeric_fields() -> None:
    features = [{"name": "events", "agg": "count"}, {"name": "users", "agg": "distinct", "field": "user"}]
    settings = _settings(
        input={"key_field": "@message_key", "timestamp_field": "@broker_timestamp"},
        aggregate={"features": features},
    )
    decoder = AggregatingDecoder(settings)
    payloads = [orjson.dumps({"user": u}) for u in ("ann", "bob", "ann", "cy")]
    keys = [b"gw-1", b"gw-1", b"gw-1", b"gw-2"]
    broker_ms = (np.array([1.0, 2.0, 3.0, 40.0]) + T0) * 1000
    out = decoder.decode_messages(payloads, keys, broker_ms.astype(np.int64))
    assert out.batch.keys.tolist() == ["gw-1"]
    events, users = out.batch.values[0].tolist()
    assert events == 3.0 and round(users) == 2


def test_decoder_for_follows_input_mode() -> None:
    assert isinstance(decoder_for(_settings()), AggregatingDecoder)
    assert type(decoder_for(Settings())) is Decoder


def test_aggregate_mode_needs_the_feature_names_as_value_fields() -> None:
    with pytest.raises(ConfigError, match=r"input.value_fields = \['flows', 'bytes'"):
        load_settings(None, {"input": {"mode": "aggregate"}, "aggregate": {"features": FEATURES}})
    with pytest.raises(ConfigError, match="count counts events"):
        _settings(aggregate={"features": [{"name": "n", "agg": "count", "field": "x"}]})
    with pytest.raises(ConfigError, match="names a feature twice"):
        _settings(aggregate={"features": [{"name": "n", "agg": "count"}] * 2})


def test_fingerprint_covers_bucketing_only_in_aggregate_mode() -> None:
    wider = _settings(aggregate={"bucket_width_s": 60.0})
    assert wider.model_fingerprint() != _settings().model_fingerprint()
    assert _settings(aggregate={"late_policy": "drop"}).model_fingerprint() == (
        _settings().model_fingerprint()
    )
    events_mode = load_settings(None, {"aggregate": {"bucket_width_s": 60.0}})
    assert events_mode.model_fingerprint() == Settings().model_fingerprint()


def test_detector_in_aggregate_mode_scores_buckets_and_reports_late_events() -> None:
    settings = _settings(
        window={"size": 4, "stride": 1},
        normalize={"warmup": 0},
        model={"hidden_size": 4, "latent_size": 2, "device": "cpu"},
    )
    n_features = len(FEATURES)
    model = LSTMAutoencoder(n_features, 4, hidden_size=4, num_layers=1, latent_size=2)
    result = TrainingResult((0.0,) * n_features, (1.0,) * n_features, {}, 1.0, {})
    detector = Detector(settings, create_artefact(model, settings, result))
    # One flow every 10 s per host up to 80 s, then a flow that is late.
    payloads = [_flow(h, t) for t in range(0, 90, 10) for h in ("h1", "h2")] + [_flow("h1", 5)]
    outcome = detector.process_messages(payloads)
    assert [r.reason for r in outcome.decoded.rejects] == ["late"]
    buckets = outcome.decoded.batch
    assert sorted(set(buckets.keys.tolist())) == ["h1", "h2"]
    assert len(buckets) == 2 * 7, "the watermark (78 s) has closed buckets [0, 10) to [60, 70)"
    # Windows of 4 buckets, stride 1: buckets 4..7 of each host complete one.
    assert sorted(outcome.scored.keys.tolist()) == ["h1"] * 4 + ["h2"] * 4


def test_each_partition_keeps_its_own_watermark_through_the_decoder() -> None:
    """A backlog on partition 1 next to live traffic on partition 0: no late rejects, and the
    buckets come back in arrival order of the events that closed them."""
    decoder = AggregatingDecoder(_settings())
    payloads = [_flow("live", 3600 + i) for i in range(30)] + [_flow("old", i) for i in range(30)]
    order = np.argsort(np.tile(np.arange(30), 2), kind="stable")  # interleave live and old
    payloads = [payloads[i] for i in order]
    streams = [partition_stream("flows", p) for p in np.tile(np.array([0, 1]), 30)]
    out = decoder.decode_messages(payloads, streams=streams)
    assert out.rejects == []
    assert np.all(np.diff(out.batch.index) > 0)
    assert out.batch.keys.tolist() == ["live", "old", "live", "old"]
    assert sorted(decoder.aggregator.streams) == [
        partition_stream("flows", 0),
        partition_stream("flows", 1),
    ]
    shared = AggregatingDecoder(_settings()).decode_messages(payloads)
    assert len(shared.rejects) > 25, "one watermark for both partitions drops the backlog"


def test_stream_codes_tell_topics_and_partitions_apart_and_are_stable() -> None:
    codes = [partition_stream(t, p) for t, p in zip("abab", [0, 0, 1, 1], strict=True)]
    assert len(set(codes)) == 4
    # A checkpoint names its stream by code, read back by another process: no per-process salt.
    script = "from stream_detector.aggregate.streams import partition_stream as s; print(s('flows', 3))"
    for seed in ("1", "2"):
        other = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(other.stdout) == partition_stream("flows", 3)


def test_events_mode_ignores_streams() -> None:
    settings = load_settings(None, {"input": {"key_field": "src", "timestamp_field": "ts",
                                               "value_fields": ["bytes"]}})
    payloads = [_flow("a", 1), _flow("b", 2)]
    with_streams = Decoder(settings.input).decode_messages(payloads, streams=np.array([0, 1]))
    plain = Decoder(settings.input).decode_messages(payloads)
    assert with_streams.batch.values.tolist() == plain.batch.values.tolist()


def test_flush_closes_the_open_buckets_when_the_input_ends() -> None:
    """At the end of a file the buckets the watermark has not passed are closed all the same,
    with the same features they would have had, and a second flush has nothing left."""
    decoder = AggregatingDecoder(_settings())
    out = decoder.decode_messages([_flow("a", 1, 100), _flow("a", 12, 5), _flow("b", 13, 7)])
    assert out.records == 3 and len(out.batch) == 1  # [0, 10) of a; [10, 20) still open
    flushed = decoder.flush()
    assert flushed.records == 0
    assert sorted(flushed.batch.keys.tolist()) == ["a", "b"]
    assert flushed.batch.ts.tolist() == [T0 + 20.0] * 2
    assert flushed.batch.index.tolist() == [-1, -1]
    flows = list(decoder.feature_names).index("flows")
    assert flushed.batch.values[:, flows].tolist() == [1.0, 1.0]
    assert len(decoder.flush().batch) == 0


def test_replay_in_aggregate_mode_writes_bucket_lines_and_closes_the_last_buckets(
    tmp_path: Any,
) -> None:
    from stream_detector.detector.replay import replay

    settings = _settings(
        window={"size": 4, "stride": 1},
        normalize={"warmup": 0, "prior_weight": 1.0},
        model={"hidden_size": 4, "latent_size": 2, "device": "cpu"},
    )
    n_features = len(FEATURES)
    model = LSTMAutoencoder(n_features, 4, hidden_size=4, num_layers=1, latent_size=2)
    result = TrainingResult((0.0,) * n_features, (1.0,) * n_features, {}, 1.0, {})
    detector = Detector(settings, create_artefact(model, settings, result))
    source = tmp_path / "flows.jsonl"
    lines = [_flow(h, t) for t in range(0, 90, 10) for h in ("h1", "h2")] + [b"not json"]
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "scores.jsonl"
    with out.open("wb") as handle:
        summary = replay(source, detector, handle, batch_size=5)
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert summary.records == 19 and summary.rejected == 1
    assert [w["offset"] for w in written if "rejected" in w] == [18]
    buckets = [w for w in written if "bucket_end" in w]
    # Nine buckets per host: seven closed by later flows, the last two closed at the end.
    assert len(buckets) == 18 and all(b["bucket_end"] - b["bucket_start"] == 10.0 for b in buckets)
    closed_at_end = [b for b in buckets if b["closed_by_offset"] is None]
    assert sorted(b["bucket_end"] for b in closed_at_end) == [T0 + 80.0] * 2 + [T0 + 90.0] * 2
    assert all(0 <= b["closed_by_offset"] < 19 for b in buckets if b["closed_by_offset"] is not None)
    assert summary.windows_scored == 2 * (9 - 4 + 1)
