"""The synthetic feed: reproducible, correctly shaped, and labelled exactly where it was altered.

Most checks compare an anomalous feed with its clean twin (same seed, anomaly_rate=0): the
generator promises the two differ only inside the labelled ranges, which makes both the labels and
each anomaly kind directly observable.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.config import InputConfig
from stream_detector.scenarios.telemetry import (
    ANOMALY_KINDS,
    GeneratorConfig,
    InjectedAnomaly,
    TelemetryGenerator,
    mapping_for,
    write_jsonl,
    write_labels,
)

SMALL = GeneratorConfig(devices=6, day_s=200.0, warmup_s=50.0, anomaly_rate=3.0, seed=7)


def run(config: GeneratorConfig, n: int) -> tuple[TelemetryGenerator, np.ndarray, np.ndarray]:
    """Generate n ticks; return the generator, ts [n, D] and values [n, D, S]."""
    generator = TelemetryGenerator(config)
    ticks = list(generator.ticks(n))
    return generator, np.stack([t[1] for t in ticks]), np.stack([t[2] for t in ticks])


def naive_label(anomalies: list[InjectedAnomaly], key: str, ts: float) -> bool:
    return any(a.key == key and a.start_ts <= ts <= a.end_ts for a in anomalies)


def test_same_seed_same_feed_other_seed_other_feed() -> None:
    first, ts_a, values_a = run(SMALL, 300)
    second, ts_b, values_b = run(SMALL, 300)
    _, _, values_c = run(replace(SMALL, seed=8), 300)
    np.testing.assert_array_equal(ts_a, ts_b)
    np.testing.assert_array_equal(values_a, values_b)
    assert first.anomalies == second.anomalies
    assert not np.array_equal(values_a, values_c)


def test_shapes_dtypes_keys_and_clock() -> None:
    config = replace(
        SMALL,
        devices=12,
        sensors=("vibration", "temperature"),
        anomaly_kinds=("spike", "stuck"),
        period_s=0.5,
    )
    generator = TelemetryGenerator(config)
    keys, ts, values = generator.next_tick()
    assert keys.dtype == object and keys.shape == (12,)
    assert keys[7] == "device-0007" and len(set(keys)) == 12
    assert ts.dtype == np.float64 and ts.shape == (12,)
    assert values.dtype == np.float32 and values.shape == (12, 2)
    assert np.isfinite(values).all()
    assert ((ts >= config.start_ts) & (ts < config.start_ts + config.period_s)).all()
    _, ts_next, _ = generator.next_tick()
    np.testing.assert_allclose(ts_next - ts, config.period_s)
    # Columns follow the configured sensor order: vibration is the small positive one here.
    _, _, many = run(config, 200)
    assert (np.median(many[:, :, 0], axis=0) > 0).all()


def test_devices_differ_in_scale() -> None:
    _, _, values = run(replace(SMALL, devices=50, anomaly_rate=0.0), 100)
    vibration_level = np.median(values[:, :, 3], axis=0)
    assert vibration_level.max() / vibration_level.min() > 20


def test_anomalies_only_after_warmup() -> None:
    generator, ts, _ = run(SMALL, 400)
    assert len(generator.anomalies) >= 5
    assert min(a.start_ts for a in generator.anomalies) >= SMALL.start_ts + SMALL.warmup_s
    keys = np.tile(np.array([f"device-{i:04d}" for i in range(SMALL.devices)], object), 400)
    labels = generator.label(keys, ts.reshape(-1))
    assert not labels[ts.reshape(-1) < SMALL.start_ts + SMALL.warmup_s].any()
    assert labels.any()


def test_anomalies_of_one_device_never_overlap() -> None:
    generator, _, _ = run(SMALL, 400)
    for key in {a.key for a in generator.anomalies}:
        ranges = sorted((a.start_ts, a.end_ts) for a in generator.anomalies if a.key == key)
        for (_, end), (start, _) in zip(ranges, ranges[1:]):
            assert start > end


def test_default_rate_is_per_device_per_day() -> None:
    config = GeneratorConfig()
    generator, _, _ = run(config, int((config.warmup_s + config.day_s) / config.period_s))
    expected = config.anomaly_rate * config.devices
    # Busy devices and the gap after each anomaly lower the count a little, never raise it.
    assert 0.6 * expected <= len(generator.anomalies) <= 1.2 * expected


def test_feed_differs_from_clean_twin_exactly_inside_labels() -> None:
    generator, ts, values = run(SMALL, 400)
    _, clean_ts, clean = run(replace(SMALL, anomaly_rate=0.0), 400)
    np.testing.assert_array_equal(ts, clean_ts)
    keys = np.tile(generator.next_tick()[0], 400)
    labels = generator.label(keys, ts.reshape(-1)).reshape(400, SMALL.devices)
    changed = (values != clean).any(axis=2)
    assert not changed[~labels].any()
    assert changed.sum() > 0.9 * labels.sum()


def test_labels_match_emitted_events_against_naive_reference() -> None:
    generator, ts, _ = run(SMALL, 300)
    keys = np.tile(generator.next_tick()[0], 300)
    flat_ts = ts.reshape(-1)
    expected = [naive_label(generator.anomalies, k, t) for k, t in zip(keys, flat_ts)]
    np.testing.assert_array_equal(generator.label(keys, flat_ts), expected)


LABELLED, _, _ = run(SMALL, 300)


@st.composite
def queries(draw: st.DrawFn) -> tuple[list[str], list[float]]:
    """Events on, just beside and between the labelled range edges, plus unknown keys."""
    anomalies = LABELLED.anomalies
    n = draw(st.integers(0, 40))
    keys, times = [], []
    for _ in range(n):
        anomaly = draw(st.sampled_from(anomalies))
        key = draw(st.sampled_from([anomaly.key, "device-0001", "device-9999", "other"]))
        edge = draw(st.sampled_from([anomaly.start_ts, anomaly.end_ts]))
        t = draw(
            st.one_of(
                st.just(edge),
                st.just(float(np.nextafter(edge, -np.inf))),
                st.just(float(np.nextafter(edge, np.inf))),
                st.floats(anomaly.start_ts - 50, anomaly.end_ts + 50),
            )
        )
        keys.append(key)
        times.append(t)
    return keys, times


@settings(max_examples=150, deadline=None)
@given(queries())
def test_label_property_matches_naive_reference(query: tuple[list[str], list[float]]) -> None:
    keys, times = query
    got = LABELLED.label(np.array(keys, dtype=object), np.array(times))
    assert got.dtype == bool and got.shape == (len(keys),)
    assert got.tolist() == [naive_label(LABELLED.anomalies, k, t) for k, t in zip(keys, times)]


def test_label_before_any_anomaly_is_all_false() -> None:
    generator = TelemetryGenerator(SMALL)
    keys, ts, _ = generator.next_tick()
    assert not generator.label(keys, ts).any()
    assert generator.label([], []).shape == (0,)


def kind_feed(kind: str) -> tuple[TelemetryGenerator, np.ndarray, np.ndarray, np.ndarray]:
    """A feed holding only `kind`, with its ts, values and clean twin values."""
    config = replace(SMALL, anomaly_kinds=(kind,), devices=8)
    generator, ts, values = run(config, 500)
    _, _, clean = run(replace(config, anomaly_rate=0.0), 500)
    assert len(generator.anomalies) >= 3
    return generator, ts, values, clean


def finished(generator: TelemetryGenerator, ts: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(device, tick mask) of every anomaly that ended within the generated ticks."""
    out = []
    for a in generator.anomalies:
        device = int(a.key.split("-")[1])
        if a.end_ts <= ts[-1, device]:
            out.append((device, (ts[:, device] >= a.start_ts) & (ts[:, device] <= a.end_ts)))
    return out


def normal_step(clean: np.ndarray, device: int) -> np.ndarray:
    """Typical reading-to-reading variability per sensor: noise plus the normal dynamics."""
    return np.std(np.diff(clean[:, device, :].astype(np.float64), axis=0), axis=0) / np.sqrt(2)


@pytest.mark.parametrize("kind", ["spike", "level_shift", "drift"])
def test_additive_kinds_move_one_sensor_by_many_sigma(kind: str) -> None:
    generator, ts, values, clean = kind_feed(kind)
    for device, rows in finished(generator, ts):
        deviation = (values[rows, device, :] - clean[rows, device, :]).astype(np.float64)
        sensor = int(np.argmax(np.abs(deviation).max(axis=0)))
        assert (np.delete(deviation, sensor, axis=1) == 0).all()
        in_sigma = np.abs(deviation[:, sensor]) / normal_step(clean, device)[sensor]
        if kind == "spike":
            assert 3 <= rows.sum() <= 6 and in_sigma.max() > 10
        elif kind == "level_shift":
            assert rows.sum() >= 40 and in_sigma.min() > 10
            np.testing.assert_allclose(deviation[:, sensor], deviation[0, sensor], rtol=1e-3)
        else:
            assert rows.sum() >= 60 and in_sigma[-1] > 10
            assert in_sigma[-1] > 10 * in_sigma[0]


def test_stuck_repeats_the_last_value_exactly() -> None:
    generator, ts, values, clean = kind_feed("stuck")
    for device, rows in finished(generator, ts):
        first = int(np.flatnonzero(rows)[0])
        held = values[rows, device, :]
        frozen = np.flatnonzero(np.ptp(held, axis=0) == 0)
        assert len(frozen) == 1 and rows.sum() >= 40
        assert held[0, frozen[0]] == values[first - 1, device, frozen[0]]
        assert np.ptp(clean[rows, device, frozen[0]]) > 0


def test_noise_burst_multiplies_noise_on_every_sensor() -> None:
    generator, ts, values, clean = kind_feed("noise_burst")
    for device, rows in finished(generator, ts):
        burst = np.std(np.diff(values[rows, device, :].astype(np.float64), axis=0), axis=0)
        calm = np.std(np.diff(clean[rows, device, :].astype(np.float64), axis=0), axis=0)
        assert rows.sum() >= 30 and (burst > 4 * calm).all()


def test_broken_correlation_flips_temperature_humidity_sign() -> None:
    generator, ts, values, clean = kind_feed("broken_correlation")
    for device, rows in finished(generator, ts):
        broken = np.corrcoef(values[rows, device, 0], values[rows, device, 1])[0, 1]
        normal = np.corrcoef(clean[rows, device, 0], clean[rows, device, 1])[0, 1]
        assert rows.sum() >= 60 and broken > 0.5 and normal < -0.5
        np.testing.assert_array_equal(values[rows, device, 2:], clean[rows, device, 2:])


def test_messages_decode_and_carry_mapped_fields() -> None:
    config = replace(SMALL, sensors=("humidity", "pressure"), anomaly_kinds=("level_shift",))
    mapping = mapping_for(config)
    input_config = InputConfig(**mapping)
    assert input_config.value_fields == ("metrics.humidity", "metrics.pressure")
    _, ts, values = run(config, 3)
    for tick, payloads in enumerate(TelemetryGenerator(config).messages(3)):
        assert len(payloads) == config.devices
        for device, payload in enumerate(payloads):
            message = json.loads(payload)
            assert orjson.loads(payload) == message
            assert message[mapping["key_field"]] == f"device-{device:04d}"
            assert message[mapping["timestamp_field"]] == ts[tick, device]
            for column, field in enumerate(mapping["value_fields"]):
                outer, inner = field.split(".")
                got = np.float32(message[outer][inner])
                assert got == values[tick, device, column]


def test_write_jsonl_and_labels_round_trip(tmp_path) -> None:
    feed, labels = tmp_path / "feed.jsonl", tmp_path / "labels.json"
    anomalies = write_jsonl(feed, SMALL, 200)
    write_labels(labels, anomalies)
    lines = feed.read_bytes().splitlines()
    assert len(lines) == 200 * SMALL.devices
    assert all(isinstance(json.loads(line), dict) for line in lines)
    reference, _, _ = run(SMALL, 200)
    assert anomalies == reference.anomalies and anomalies
    assert [InjectedAnomaly(**row) for row in json.loads(labels.read_text())] == anomalies
    assert set(ANOMALY_KINDS) >= {a.kind for a in anomalies}


@pytest.mark.parametrize(
    "bad",
    [
        {"devices": 0},
        {"sensors": ()},
        {"sensors": ("temperature", "temperature")},
        {"sensors": ("voltage",)},
        {"anomaly_kinds": ("meteor",)},
        {"anomaly_kinds": ()},
        {"sensors": ("temperature", "pressure")},  # broken_correlation needs humidity
        {"period_s": 0.0},
        {"noise": -1.0},
    ],
)
def test_invalid_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        GeneratorConfig(**bad)
