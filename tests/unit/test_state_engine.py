"""Detector snapshot/restore: a restored detector is indistinguishable from the one snapshotted.

The property: feed a detector a stream, snapshot it (through the on-disk format), restore into a
fresh detector, feed both the same continuation; every alert and every scored window must be
identical (slot numbers aside, which are an internal detail). Small key limits and idle TTLs make
evictions, slot reuse and growth happen on both sides of the snapshot.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from stream_detector.config import Settings, load_settings
from stream_detector.detector.artefact import ModelArtefact, TrainingResult, create_artefact
from stream_detector.detector.facade import DetectionResult, Detector
from stream_detector.detector.snapshot import EngineSnapshot, decode, encode, make_checkpoint
from stream_detector.detector.training import train
from stream_detector.engine.decode import Decoder
from stream_detector.engine.model import LSTMAutoencoder

N_KEYS = 6


def _settings(stride: int = 1, max_keys: int = 4) -> Settings:
    return load_settings(
        None,
        {
            "window": {"size": 4, "stride": stride, "max_keys": max_keys, "initial_capacity": 2,
                       "idle_ttl_s": 6.0},
            "normalize": {"warmup": 3},
            "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
            "train": {"epochs": 1, "batch_size": 64, "seed": 0, "max_windows": 400},
            "threshold": {"warmup": 3, "alpha": 0.3},
            "episodes": {"min_consecutive": 1, "cooldown": 2},
        },
    )


# Event times in 2023, above input.min_timestamp's floor.
T0 = 1_700_000_000.0


def _payload(key: int, ts: float, value: float) -> bytes:
    return orjson.dumps({"key": f"k{key}", "ts": ts, "value": value})


@pytest.fixture(scope="module")
def artefact() -> ModelArtefact:
    # Every key tracked while training: round-robin over more keys than max_keys would evict
    # each key before its first window.
    settings = _settings(max_keys=N_KEYS)
    rng = np.random.default_rng(0)
    payloads = [
        _payload(k, T0 + t, float(np.sin(t / 3 + k) + rng.normal(0, 0.1)))
        for t in range(80)
        for k in range(N_KEYS)
    ]
    return train([Decoder(settings.input).decode_messages(payloads)], settings, out_dir=None)


# One event: (key, time step, value). Steps go back as well as forward (late events: the idle
# watermark must survive the snapshot) and sometimes jump past idle_ttl_s; large values are
# spikes that alert.
events = st.lists(
    st.tuples(
        st.integers(0, N_KEYS - 1),
        st.sampled_from([0, 1, 1, -3, 8]),
        st.one_of(st.floats(-1.5, 1.5), st.sampled_from([25.0, -40.0])),
    ),
    min_size=30,
    max_size=120,
)


def _stream(raw: list[tuple[int, int, float]]) -> list[bytes]:
    ts = np.cumsum([step for _, step, _ in raw]) + T0
    return [_payload(k, float(t), v) for (k, _, v), t in zip(raw, ts, strict=True)]


def _feed(detector: Detector, payloads: list[bytes], cuts: list[int]) -> list[DetectionResult]:
    bounds = [0, *sorted(c % (len(payloads) + 1) for c in cuts), len(payloads)]
    return [detector.process_messages(payloads[a:b]) for a, b in zip(bounds, bounds[1:])]


def _observable(results: list[DetectionResult]) -> list[object]:
    """Everything a caller can see, slots excepted."""
    seen: list[object] = []
    for result in results:
        scored = result.scored
        seen.append(result.alerts)
        seen.append(scored.keys.tolist())
        for name in ("event_index", "start_ts", "end_ts", "scores", "thresholds", "exceed",
                     "feature_errors", "actual", "expected"):
            seen.append(getattr(scored, name).tolist())
    return seen


@hyp_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=events,
    after=events,
    cuts_before=st.lists(st.integers(0, 200), max_size=3),
    cuts_after=st.lists(st.integers(0, 200), max_size=3),
    stride=st.integers(1, 3),
)
def test_restored_detector_continues_exactly_like_the_original(
    artefact: ModelArtefact,
    before: list[tuple[int, int, float]],
    after: list[tuple[int, int, float]],
    cuts_before: list[int],
    cuts_after: list[int],
    stride: int,
) -> None:
    settings = _settings(stride)
    payloads = _stream(before + after)
    head, tail = payloads[: len(before)], payloads[len(before) :]
    original = Detector(settings, artefact)
    _feed(original, head, cuts_before)

    snapshot = original.snapshot([f"k{k}" for k in range(N_KEYS)])
    assert len(snapshot) == original.n_keys
    checkpoint = make_checkpoint(
        snapshot, model_version="m", fingerprint="f", topic="t", partition=0, offset=len(head)
    )
    restored = Detector(settings, artefact)
    assert restored.restore(decode(encode(checkpoint)).engine) == original.n_keys
    assert restored.open_episodes == original.open_episodes

    expected = _observable(_feed(original, tail, cuts_after))
    assert _observable(_feed(restored, tail, cuts_after)) == expected


def test_snapshot_of_some_keys_and_drop(artefact: ModelArtefact) -> None:
    settings = _settings()
    detector = Detector(settings, artefact)
    detector.process_messages([_payload(k, T0 + t, 0.1) for t in range(5) for k in range(3)])
    part = detector.snapshot(["k0", "k2", "never-seen"])
    assert part.keys.tolist() == ["k0", "k2"]
    assert all(array.shape[0] == 2 for array in part.arrays.values())
    assert detector.drop(["k0", "k2", "never-seen"]) == 2
    assert detector.n_keys == 1
    assert len(detector.snapshot(["k0", "k2"])) == 0
    assert detector.restore(part) == 2 and detector.n_keys == 3


def test_restore_replaces_live_state_of_the_same_key(artefact: ModelArtefact) -> None:
    """The checkpoint is the truth for its keys: the consumer resumes at its offset."""
    settings = _settings()
    detector = Detector(settings, artefact)
    detector.process_messages([_payload(0, T0 + t, 0.1) for t in range(3)])
    early = detector.snapshot(["k0"])
    detector.process_messages([_payload(0, 1_010.0 + t, 0.1) for t in range(3)])
    detector.restore(early)
    again = detector.snapshot(["k0"])
    assert int(again.arrays["windows.count"][0]) == 3


def test_malformed_snapshot_is_refused_before_anything_changes(artefact: ModelArtefact) -> None:
    settings = _settings()
    source = Detector(settings, artefact)
    source.process_messages([_payload(k, T0, 0.1) for k in range(3)])
    snapshot = source.snapshot(["k0", "k1", "k2"])
    wrong_window = dict(snapshot.arrays)
    wrong_window["windows.values"] = np.zeros((3, 5, 1), dtype=np.float32)
    target = Detector(settings, artefact)
    with pytest.raises(ValueError, match="values"):
        target.restore(type(snapshot)(snapshot.keys, wrong_window, 0.0, 0))
    missing = {k: v for k, v in snapshot.arrays.items() if k != "threshold.var"}
    with pytest.raises(ValueError, match="var"):
        target.restore(type(snapshot)(snapshot.keys, missing, 0.0, 0))
    assert target.n_keys == 0


# -- aggregate mode: a partition's bucket aggregator travels with its checkpoint -----------------


def _aggregate_settings() -> Settings:
    features = [
        {"name": "flows", "agg": "count"},
        {"name": "bytes", "agg": "sum", "field": "bytes"},
        {"name": "ports", "agg": "distinct", "field": "port"},
    ]
    return load_settings(
        None,
        {
            "input": {"mode": "aggregate", "key_field": "src", "timestamp_field": "ts",
                      "value_fields": [f["name"] for f in features]},
            "aggregate": {"bucket_width_s": 5.0, "allowed_lateness_s": 3.0,
                          "idle_timeout_s": 12.0, "features": features},
            "window": {"size": 3, "stride": 1, "max_keys": 16},
            "normalize": {"warmup": 2},
            "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
            "threshold": {"warmup": 2, "alpha": 0.3},
            "episodes": {"min_consecutive": 1, "cooldown": 2},
        },
    )


@pytest.fixture(scope="module")
def aggregate_artefact() -> ModelArtefact:
    settings = _aggregate_settings()
    model = LSTMAutoencoder(3, 3, hidden_size=4, num_layers=1, latent_size=2)
    result = TrainingResult((1.0, 100.0, 1.0), (1.0, 100.0, 1.0), {}, 0.5, {})
    return create_artefact(model, settings, result)


# One flow: (host, seconds after the previous flow, possibly negative: out of order or late;
# bytes, sometimes huge so that alerts open; destination port).
flows = st.lists(
    st.tuples(
        st.sampled_from(["h0", "h1", "h2", "h3"]),
        st.sampled_from([0.0, 0.4, 1.3, 2.0, -2.5, -9.0, 15.0]),
        st.one_of(st.integers(1, 500), st.just(1_000_000)),
        st.integers(1, 30),
    ),
    min_size=20,
    max_size=100,
)


def _flows(raw: list[tuple[str, float, int, int]]) -> list[bytes]:
    ts = T0 + np.cumsum([step for _, step, _, _ in raw])
    return [
        orjson.dumps({"src": src, "ts": float(t), "bytes": size, "port": port})
        for (src, _, size, port), t in zip(raw, ts, strict=True)
    ]


def _streams(payloads: list[bytes]) -> np.ndarray:
    """Hosts h0, h1 on partition 0 and h2, h3 on partition 1 (keyed input)."""
    return np.array([0 if b'"h0"' in p or b'"h1"' in p else 1 for p in payloads], dtype=np.int64)


def _feed_streams(detector: Detector, payloads: list[bytes], cuts: list[int]) -> list[DetectionResult]:
    bounds = [0, *sorted(c % (len(payloads) + 1) for c in cuts), len(payloads)]
    streams = _streams(payloads)
    return [
        detector.process_messages(payloads[a:b], streams=streams[a:b])
        for a, b in zip(bounds, bounds[1:])
    ]


def _checkpointed(detector: Detector, stream: int, offset: int) -> EngineSnapshot:
    """One partition's snapshot through the on-disk format, as PartitionState writes it."""
    snapshot = detector.snapshot(["h0", "h1", "h2", "h3"], stream=stream)
    checkpoint = make_checkpoint(
        snapshot, model_version="m", fingerprint="f", topic="t", partition=stream, offset=offset
    )
    return decode(encode(checkpoint)).engine


@hyp_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=flows,
    after=flows,
    cuts_before=st.lists(st.integers(0, 200), max_size=3),
    cuts_after=st.lists(st.integers(0, 200), max_size=3),
)
def test_restored_aggregate_detector_continues_exactly_like_the_original(
    aggregate_artefact: ModelArtefact,
    before: list[tuple[str, float, int, int]],
    after: list[tuple[str, float, int, int]],
    cuts_before: list[int],
    cuts_after: list[int],
) -> None:
    """Open buckets, watermarks and idling keys of both partitions survive the cut: the restored
    detector emits the same buckets, scores and alerts, and rejects the same late flows."""
    settings = _aggregate_settings()
    payloads = _flows(before + after)
    head, tail = payloads[: len(before)], payloads[len(before) :]
    original = Detector(settings, aggregate_artefact)
    _feed_streams(original, head, cuts_before)

    restored = Detector(settings, aggregate_artefact)
    for stream in (0, 1):
        restored.restore(_checkpointed(original, stream, len(head)))
    assert restored.n_keys == original.n_keys

    want = _feed_streams(original, tail, cuts_after)
    got = _feed_streams(restored, tail, cuts_after)
    assert _observable(got) == _observable(want)
    for g, w in zip(got, want, strict=True):
        assert g.decoded.rejects == w.decoded.rejects
        assert g.decoded.batch.values.tolist() == w.decoded.batch.values.tolist()


def test_buckets_open_at_the_cut_are_neither_lost_nor_counted_twice(
    aggregate_artefact: ModelArtefact,
) -> None:
    settings = _aggregate_settings()
    detector = Detector(settings, aggregate_artefact)
    first = [orjson.dumps({"src": "h0", "ts": T0 + t, "bytes": 10, "port": t}) for t in range(4)]
    assert len(detector.process_messages(first, streams=np.zeros(4)).decoded.batch) == 0
    snapshot = _checkpointed(detector, 0, 4)
    assert snapshot.buckets is not None and snapshot.buckets.open.count.tolist() == [4.0]

    restored = Detector(settings, aggregate_artefact)
    restored.restore(snapshot)
    later = [orjson.dumps({"src": "h0", "ts": T0 + 4.5, "bytes": 10, "port": 99}),
             orjson.dumps({"src": "h0", "ts": T0 + 30, "bytes": 1, "port": 1})]
    closed = restored.process_messages(later, streams=np.zeros(2)).decoded.batch
    flows_, total, ports = closed.values[0].tolist()
    assert (closed.ts[0], flows_, total) == (T0 + 5.0, 5.0, 50.0)
    assert round(ports) == 5


def test_dropping_a_partition_forgets_its_open_buckets(aggregate_artefact: ModelArtefact) -> None:
    detector = Detector(_aggregate_settings(), aggregate_artefact)
    flows_ = [orjson.dumps({"src": h, "ts": T0 + 1, "bytes": 1, "port": 1}) for h in ("h0", "h2")]
    detector.process_messages(flows_, streams=np.array([0, 1]))
    assert detector.drop([], streams=[1]) == 0
    assert detector.snapshot([], stream=1).buckets is not None
    assert len(detector.snapshot([], stream=1).buckets) == 0
    assert detector.snapshot([], stream=0).buckets.keys.tolist() == ["h0"]


def test_snapshot_of_another_input_mode_is_refused(
    artefact: ModelArtefact, aggregate_artefact: ModelArtefact
) -> None:
    events_snapshot = Detector(_settings(), artefact).snapshot([])
    with pytest.raises(ValueError, match="input.mode"):
        Detector(_aggregate_settings(), aggregate_artefact).restore(events_snapshot)
