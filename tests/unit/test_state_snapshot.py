"""The checkpoint format: round trip, no pickle, and refusal of checkpoints made elsewhere."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_detector.aggregate.buckets import AggregatorState
from stream_detector.aggregate.partials import Partials
from stream_detector.aggregate.streams import partition_stream
from stream_detector.config import load_settings
from stream_detector.detector.snapshot import (
    FORMAT_VERSION,
    EngineSnapshot,
    SnapshotError,
    SnapshotMismatch,
    check_compatible,
    decode,
    encode,
    make_checkpoint,
    state_fingerprint,
)


def _checkpoint(keys: list[str], model_version: str = "lstm-ae-1") -> bytes:
    n = len(keys)
    rng = np.random.default_rng(n)
    engine = EngineSnapshot(
        keys=np.array(keys, dtype=object),
        arrays={
            "windows.values": rng.normal(size=(n, 4, 2)).astype(np.float32),
            "windows.count": np.arange(n, dtype=np.int64),
            "episodes.open": rng.random(n) < 0.5,
        },
        watermark=1_700_000_000.5,
        seq=12345,
    )
    return encode(
        make_checkpoint(
            engine, model_version=model_version, fingerprint="fp", topic="events", partition=3,
            offset=987,
        )
    )


@given(st.lists(st.text(min_size=1, max_size=12), max_size=20, unique=True))
def test_round_trip_keeps_keys_arrays_and_metadata(keys: list[str]) -> None:
    data = _checkpoint(keys)
    checkpoint = decode(data)
    meta = checkpoint.meta
    assert (meta.topic, meta.partition, meta.offset, meta.n_keys) == ("events", 3, 987, len(keys))
    assert meta.format_version == FORMAT_VERSION and meta.model_version == "lstm-ae-1"
    engine = checkpoint.engine
    assert engine.keys.tolist() == keys
    assert (engine.watermark, engine.seq) == (1_700_000_000.5, 12345)
    rng = np.random.default_rng(len(keys))
    np.testing.assert_array_equal(
        engine.arrays["windows.values"], rng.normal(size=(len(keys), 4, 2)).astype(np.float32)
    )
    assert engine.arrays["windows.count"].tolist() == list(range(len(keys)))
    assert engine.arrays["episodes.open"].dtype == bool


@pytest.mark.parametrize("garbage", [b"", b"not a zip", b"PK\x03\x04 truncated"])
def test_unreadable_bytes_raise_snapshot_error(garbage: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode(garbage)


def test_truncated_checkpoint_is_refused() -> None:
    data = _checkpoint(["a", "b"])
    with pytest.raises(SnapshotError):
        decode(data[: len(data) // 2])


def test_pickled_arrays_are_never_loaded() -> None:
    arrays = dict(np.load(io.BytesIO(_checkpoint(["a"])), allow_pickle=False))
    arrays["windows.count"] = np.array([object()], dtype=object)  # saved as a pickle
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with pytest.raises(SnapshotError, match="pickle"):
        decode(buffer.getvalue())


def test_rows_must_match_the_keys() -> None:
    buffer = io.BytesIO(_checkpoint(["a", "b"]))
    arrays = dict(np.load(buffer, allow_pickle=False))
    arrays["windows.count"] = arrays["windows.count"][:1]
    out = io.BytesIO()
    np.savez(out, **arrays)
    with pytest.raises(SnapshotError, match="one row per key"):
        decode(out.getvalue())


def test_other_model_config_or_format_is_refused_saying_why() -> None:
    meta = decode(_checkpoint(["a"], model_version="lstm-ae-old")).meta
    check_compatible(decode(_checkpoint(["a"])).meta, "lstm-ae-1", "fp")
    with pytest.raises(SnapshotMismatch, match="lstm-ae-old"):
        check_compatible(meta, "lstm-ae-1", "fp")
    with pytest.raises(SnapshotMismatch, match="fingerprint"):
        check_compatible(decode(_checkpoint(["a"])).meta, "lstm-ae-1", "other")
    future = type(meta)(**{**meta.__dict__, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(SnapshotMismatch, match="format version"):
        check_compatible(future, "lstm-ae-old", "fp")


def test_fingerprint_follows_the_settings_that_shape_the_state() -> None:
    base = load_settings(None, {})
    stride = load_settings(None, {"window": {"stride": 3}})
    size = load_settings(None, {"window": {"size": 16}})
    assert state_fingerprint(base) == state_fingerprint(stride)
    assert state_fingerprint(base) != state_fingerprint(size)


def _bucket_state(keys: list[str], groups: int) -> AggregatorState:
    rng = np.random.default_rng(groups)
    partials = Partials.empty(groups, 2, 1, 16)
    partials.count[:] = rng.integers(1, 9, groups)
    partials.sums[:] = rng.normal(size=(groups, 2))
    partials.registers[:] = rng.integers(0, 20, size=(groups, 1, 16), dtype=np.uint8)
    return AggregatorState(
        keys=np.array(keys, dtype=object),
        last_data=rng.integers(-5, 5, len(keys)),
        open_key=rng.integers(0, max(len(keys), 1), groups),
        open_bucket=np.sort(rng.integers(100, 110, groups)),
        open=partials,
        max_ts=-np.inf if groups == 0 else 1_100.5,
        closed_until=None if groups == 0 else 100,
    )


@pytest.mark.parametrize(("keys", "groups"), [(["h1", "h2", "only-open"], 5), ([], 0)])
def test_bucket_aggregator_state_round_trips_beside_the_engine_keys(
    keys: list[str], groups: int
) -> None:
    """The aggregator's keys are its own (a key with only open buckets is in no window yet)."""
    state = _bucket_state(keys, groups)
    engine = EngineSnapshot(
        keys=np.array(["h1"], dtype=object),
        arrays={"windows.count": np.array([3])},
        watermark=-np.inf,
        seq=0,
        stream=partition_stream("flows", 7),
        buckets=state,
    )
    blob = encode(make_checkpoint(engine, model_version="m", fingerprint="f", topic="flows",
                                  partition=7, offset=1))
    back = decode(blob).engine
    assert back.stream == partition_stream("flows", 7)
    assert back.keys.tolist() == ["h1"] and back.watermark == -np.inf
    assert back.buckets is not None
    assert back.buckets.keys.tolist() == keys
    assert (back.buckets.max_ts, back.buckets.closed_until) == (state.max_ts, state.closed_until)
    for name in ("last_data", "open_key", "open_bucket"):
        assert np.array_equal(getattr(back.buckets, name), getattr(state, name))
    for name in ("count", "sums", "mins", "maxs", "registers"):
        assert np.array_equal(getattr(back.buckets.open, name), getattr(state.open, name))


def test_a_version_1_checkpoint_reads_but_is_refused() -> None:
    """Version 1 had no bucket state: restoring one in aggregate mode would lose open buckets."""
    archive = dict(np.load(io.BytesIO(_checkpoint(["a"]))))
    meta = orjson.loads(archive["__meta__"].tobytes())
    del meta["buckets"]
    archive["__meta__"] = np.frombuffer(orjson.dumps({**meta, "format_version": 1}), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **archive)
    old = decode(buffer.getvalue())
    assert old.meta.format_version == 1 and old.engine.buckets is None
    with pytest.raises(SnapshotMismatch, match="format version 1"):
        check_compatible(old.meta, "lstm-ae-1", "fp")
