"""The engine facade end to end, in-process: train a tiny model, detect, replay."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
import structlog

from stream_detector.config import Settings, load_settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.replay import replay
from stream_detector.detector.training import train
from stream_detector.engine.decode import Decoder
from stream_detector.engine.stage import WindowStage

# Event times in 2023, above input.min_timestamp's floor.
T0 = 1_700_000_000.0

KEYS = [f"sensor-{i}" for i in range(6)]
ANOMALOUS = {"sensor-2", "sensor-4"}


def _settings() -> Settings:
    return load_settings(
        None,
        {
            "window": {"size": 8, "stride": 2},
            "model": {"hidden_size": 8, "latent_size": 4, "device": "cpu"},
            "train": {"epochs": 8, "patience": 3, "batch_size": 64, "seed": 3},
            "threshold": {"warmup": 20},
            "episodes": {"min_consecutive": 2, "cooldown": 3},
        },
    )


def _messages(n_steps: int, anomaly: tuple[int, int] | None, seed: int) -> list[bytes]:
    """A noisy sine per key, time-interleaved; optional level shift on ANOMALOUS keys."""
    rng = np.random.default_rng(seed)
    lines = []
    for step in range(n_steps):
        for k, key in enumerate(KEYS):
            value = np.sin(step / 6.0 + k) * (1 + k) + rng.normal(0, 0.05) + 10 * k
            if anomaly and key in ANOMALOUS and anomaly[0] <= step < anomaly[1]:
                value += 6.0 * (1 + k)
            lines.append(orjson.dumps({"key": key, "ts": T0 + step, "value": float(value)}))
    return lines


@pytest.fixture(scope="module")
def artefact() -> ModelArtefact:
    settings = _settings()
    decoder = Decoder(settings.input)
    batches = [decoder.decode_messages(_messages(300, None, seed=1))]
    return train(batches, settings, out_dir=None)


def _run(artefact: ModelArtefact, payloads: list[bytes], batch: int) -> list:
    detector = Detector(_settings(), artefact)
    alerts = []
    for start in range(0, len(payloads), batch):
        alerts.extend(detector.process_messages(payloads[start : start + batch]).alerts)
    return alerts


def test_alerts_open_and_resolve_only_for_anomalous_keys(artefact: ModelArtefact) -> None:
    payloads = _messages(400, anomaly=(250, 290), seed=2)
    alerts = _run(artefact, payloads, batch=60)
    opened = {a.key for a in alerts if a.kind == "open"}
    resolved = {a.key for a in alerts if a.kind == "resolve"}
    assert opened == ANOMALOUS
    assert resolved == ANOMALOUS
    for alert in alerts:
        assert T0 + 240 <= alert.window_end <= T0 + 310
        assert alert.model_version == artefact.metadata.model_version
        assert alert.score > alert.threshold or alert.kind == "resolve"
        assert alert.top_features and alert.top_features[0].name == "value"


def test_bad_records_are_rejected_not_raised(artefact: ModelArtefact) -> None:
    detector = Detector(_settings(), artefact)
    payloads = [b"{", b"[]", b'{"key":"a","ts":1000}', b'{"key":"a","ts":1000,"value":"x"}']
    result = detector.process_messages(payloads + _messages(1, None, seed=0))
    assert [r.index for r in result.decoded.rejects] == [0, 1, 2, 3]
    assert len(result.decoded.batch) == len(KEYS)


def test_same_stream_same_batching_gives_identical_alerts(artefact: ModelArtefact) -> None:
    payloads = _messages(400, anomaly=(250, 290), seed=5)
    first = _run(artefact, payloads, batch=90)
    second = _run(artefact, payloads, batch=90)
    assert first == second and first


def test_replay_is_deterministic_and_covers_every_record(
    artefact: ModelArtefact, tmp_path: Path
) -> None:
    source = tmp_path / "feed.jsonl"
    payloads = _messages(400, anomaly=(250, 290), seed=7)
    payloads.insert(10, b"not json")
    source.write_bytes(b"\n".join(payloads) + b"\n")
    outputs = []
    for _ in range(2):
        out = io.BytesIO()
        summary = replay(source, Detector(_settings(), artefact), out, batch_size=128)
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]
    lines = [orjson.loads(line) for line in outputs[0].splitlines()]
    assert [line["offset"] for line in lines] == list(range(len(payloads)))
    assert lines[10]["rejected"] == "not_json"
    assert summary.records == len(payloads) and summary.rejected == 1
    assert summary.alerts_opened == len(ANOMALOUS)
    flagged = {line["key"] for line in lines if line.get("episode_id")}
    assert flagged == ANOMALOUS


def test_warmup_skips_the_same_windows_however_the_stream_is_batched(
    artefact: ModelArtefact,
) -> None:
    payloads = _messages(120, anomaly=None, seed=9)
    scored = []
    for batch in (7, 1000):
        detector = Detector(_settings(), artefact)
        rows: list[tuple[str, float]] = []
        for start in range(0, len(payloads), batch):
            result = detector.process_messages(payloads[start : start + batch])
            rows.extend(zip(result.scored.keys.tolist(), result.scored.end_ts.tolist()))
        scored.append(sorted(rows))
    assert scored[0] == scored[1]
    warmup = _settings().normalize.warmup
    first_end = min(ts for key, ts in scored[0] if key == KEYS[0])
    assert first_end == T0 + warmup - 1  # the key's warmup-th event closes its first window


def test_events_going_back_in_time_are_accepted_and_counted(artefact: ModelArtefact) -> None:
    detector = Detector(_settings(), artefact)
    forward = _messages(30, None, seed=11)
    detector.process_messages(forward)
    late = [orjson.dumps({"key": KEYS[0], "ts": T0 + 3.0, "value": 1.0}),
            orjson.dumps({"key": KEYS[1], "ts": T0 + 40.0, "value": 1.0}),
            orjson.dumps({"key": KEYS[1], "ts": T0 + 35.0, "value": 1.0})]
    result = detector.process_messages(late)
    assert len(result.decoded.batch) == 3 and not result.decoded.rejects
    # k0's event is behind its own t=29; k1's second event is behind its first in the batch.
    assert detector.out_of_order_total == 2


def _stuck(payloads: list[bytes], key: str, steps: range) -> list[bytes]:
    """The feed with `key` repeating, over `steps`, the value it read just before them."""
    out, frozen = [], None
    for step, line in enumerate(payloads):
        event = orjson.loads(line)
        if event["key"] == key and step // len(KEYS) == steps.start - 1:
            frozen = event["value"]
        if event["key"] == key and step // len(KEYS) in steps:
            event["value"] = frozen
        out.append(orjson.dumps(event))
    return out


def test_a_stuck_sensor_opens_an_episode_that_names_it_flat(artefact: ModelArtefact) -> None:
    payloads = _stuck(_messages(400, None, seed=13), "sensor-3", range(250, 300))
    alerts = _run(artefact, payloads, batch=100)
    assert {a.key for a in alerts} == {"sensor-3"}
    opened, resolved = alerts
    assert opened.kind == "open" and opened.flat_features == ("value",)
    # Flat from the window-size-th repeated reading on: the run is 8 long at step 257.
    assert T0 + 257 <= opened.window_end <= T0 + 262
    assert opened.score < opened.threshold  # reconstructed well: only the flat line exceeds
    # The anomaly ends with the last flat window; the resolve comes a cool-down later.
    assert resolved.kind == "resolve" and resolved.anomaly_end == T0 + 299
    assert resolved.window_end > resolved.anomaly_end


def test_bucket_counts_are_never_judged_flat() -> None:
    settings = load_settings(
        None,
        {
            "input": {"mode": "aggregate", "value_fields": ["n"]},
            "aggregate": {"features": [{"name": "n", "agg": "count"}]},
        },
    )
    stage = WindowStage(settings, np.zeros(1), np.ones(1), stride=1)
    assert stage.flat is None and "flat" not in stage.slot_stages
    assert stage.spread is None and "spread" not in stage.slot_stages


def test_a_sensor_that_loses_its_swing_opens_an_episode_that_names_it_flat(
    artefact: ModelArtefact,
) -> None:
    """sensor-3 keeps moving, by a hundredth of its usual swing: no value repeats, so only
    the spread of its windows shows it."""
    rng = np.random.default_rng(14)
    payloads = []
    for line in _messages(400, None, seed=13):
        event = orjson.loads(line)
        if event["key"] == "sensor-3" and 250 <= event["ts"] - T0 < 300:
            event["value"] = 30.0 + rng.normal(0, 0.005)
        payloads.append(orjson.dumps(event))
    alerts = _run(artefact, payloads, batch=100)
    assert {a.key for a in alerts} == {"sensor-3"}
    opened = alerts[0]
    assert opened.kind == "open" and opened.flat_features == ("value",)
    assert T0 + 257 <= opened.window_end <= T0 + 275
    assert [a.kind for a in alerts] == ["open", "resolve"]
    assert T0 + 290 <= alerts[1].anomaly_end <= T0 + 307


def test_replay_lines_name_the_features_in_a_flat_line(
    artefact: ModelArtefact, tmp_path: Path
) -> None:
    source = tmp_path / "stuck.jsonl"
    payloads = _stuck(_messages(400, None, seed=13), "sensor-3", range(250, 300))
    source.write_bytes(b"\n".join(payloads) + b"\n")
    out = io.BytesIO()
    replay(source, Detector(_settings(), artefact), out, batch_size=256)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    flat = [line for line in lines if line["flat_features"]]
    assert flat and {line["key"] for line in flat} == {"sensor-3"}
    assert all(line["flat_features"] == ["value"] and line["anomaly"] for line in flat)
    assert all(T0 + 257 <= line["ts"] <= T0 + 299 for line in flat)


def _with_a_new_key(n_steps: int, first_step: int) -> list[bytes]:
    """The trained keys' feed with "sensor-new", a key the model never saw but shaped like
    sensor-1, from `first_step`."""
    rng = np.random.default_rng(6)
    new = [
        orjson.dumps({
            "key": "sensor-new",
            "ts": T0 + step + 0.5,
            "value": float(np.sin(step / 6.0 + 1) * 2 + rng.normal(0, 0.05) + 10),
        })
        for step in range(first_step, n_steps)
    ]
    return sorted(_messages(n_steps, None, seed=5) + new, key=lambda m: orjson.loads(m)["ts"])


def _new_key_settings(artefact_settings: Settings) -> Settings:
    episodes = artefact_settings.episodes.model_copy(update={"alert_new_keys": True})
    return artefact_settings.model_copy(update={"episodes": episodes})


def test_a_key_the_model_was_not_trained_on_opens_an_episode_at_its_first_event(
    artefact: ModelArtefact,
) -> None:
    assert artefact.metadata.training_keys == tuple(sorted(KEYS))
    payloads = _with_a_new_key(200, first_step=50)
    detector = Detector(_new_key_settings(_settings()), artefact)
    alerts = [a for start in range(0, len(payloads), 60)
              for a in detector.process_messages(payloads[start : start + 60]).alerts]
    arrivals = [a for a in alerts if a.reason == "new_key"]
    assert [(a.kind, a.key, a.window_end) for a in arrivals] == [
        ("open", "sensor-new", T0 + 50.5)
    ]
    # Its own calm windows resolve it, once the key is warm and judged.
    resolves = [a for a in alerts if a.kind == "resolve" and a.key == "sensor-new"]
    assert [a.episode_id for a in resolves] == [arrivals[0].episode_id]
    assert resolves[0].anomaly_end == T0 + 50.5
    # Off by default, and off (with a warning) for a model that records no training keys.
    assert not [a for a in _run(artefact, payloads, batch=60) if a.key == "sensor-new"]
    older = ModelArtefact(artefact.model, replace(artefact.metadata, training_keys=None))
    with structlog.testing.capture_logs() as logs:
        detector = Detector(_new_key_settings(_settings()), older)
    assert any("no training keys" in log["event"] for log in logs)
    assert not [a for a in detector.process_messages(payloads).alerts if a.key == "sensor-new"]


def test_replay_lines_say_where_a_new_key_arrived(artefact: ModelArtefact, tmp_path: Path) -> None:
    source = tmp_path / "arrival.jsonl"
    source.write_bytes(b"\n".join(_with_a_new_key(120, first_step=50)) + b"\n")
    out = io.BytesIO()
    replay(source, Detector(_new_key_settings(_settings()), artefact), out, batch_size=256)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    arrived = [line for line in lines if "new_key" in line["alerts"]]
    assert [(line["key"], line["ts"], line["score"]) for line in arrived] == [
        ("sensor-new", T0 + 50.5, None)
    ]
    assert arrived[0]["episode_id"] is not None


def test_a_new_key_forgotten_and_back_is_new_again_and_a_trained_one_never_is(
    artefact: ModelArtefact,
) -> None:
    settings = _new_key_settings(_settings())
    settings = settings.model_copy(
        update={"window": settings.window.model_copy(update={"idle_ttl_s": 30.0})}
    )
    feed = [orjson.loads(m) for m in _with_a_new_key(200, first_step=20)]
    # sensor-new and sensor-0 fall silent for 60 s (past the 30 s idle TTL), then come back.
    silent = ("sensor-new", "sensor-0")
    feed = [e for e in feed if e["key"] not in silent or not 60 <= e["ts"] - T0 < 120]
    payloads = [orjson.dumps(e) for e in feed]
    detector = Detector(settings, artefact)
    alerts = [a for start in range(0, len(payloads), 97)
              for a in detector.process_messages(payloads[start : start + 97]).alerts]
    arrivals = [(a.key, a.window_end) for a in alerts if a.reason == "new_key"]
    assert arrivals == [("sensor-new", T0 + 20.5), ("sensor-new", T0 + 120.5)]
    # The first episode ended when the key was forgotten.
    assert ("sensor-new", "evicted") in {(a.key, a.reason) for a in alerts if a.kind == "resolve"}
