"""The checkpoint format: round trip, no pickle, and refusal of checkpoints made elsewhere."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, strategies as st

from stream_detector.config import load_settings
from stream_detector.state.snapshot import (
    FORMAT_VERSION,
    EngineSnapshot,
    SnapshotError,
    SnapshotMismatch,
    check_compatible,
    decode,
    encode,
    make_checkpoint,
    read_meta,
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
    assert read_meta(data) == meta
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
    meta = read_meta(_checkpoint(["a"], model_version="lstm-ae-old"))
    check_compatible(read_meta(_checkpoint(["a"])), "lstm-ae-1", "fp")
    with pytest.raises(SnapshotMismatch, match="lstm-ae-old"):
        check_compatible(meta, "lstm-ae-1", "fp")
    with pytest.raises(SnapshotMismatch, match="fingerprint"):
        check_compatible(read_meta(_checkpoint(["a"])), "lstm-ae-1", "other")
    future = type(meta)(**{**meta.__dict__, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(SnapshotMismatch, match="format version"):
        check_compatible(future, "lstm-ae-old", "fp")


def test_fingerprint_follows_the_settings_that_shape_the_state() -> None:
    base = load_settings(None, {})
    assert state_fingerprint(base) == state_fingerprint(load_settings(None, {"window": {"stride": 3}}))
    assert state_fingerprint(base) != state_fingerprint(load_settings(None, {"window": {"size": 16}}))
