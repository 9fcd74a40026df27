"""Retraining: the episodes the service published (their spans drawn from their alerts) and the
operators' true positives are left out of the training windows, the rest is `train` as ever
(seeded, deterministic), and the `retrain` command writes (and registers) the candidate."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from test_feedback_send import opened, resolved

from stream_detector.config import Settings, load_settings
from stream_detector.detector.artefact import ModelArtefact, load_artefact
from stream_detector.detector.exclusions import ExcludedSpans, Span, episode_spans
from stream_detector.detector.feedback import feedback_envelope
from stream_detector.detector.recent import RecentEpisodes
from stream_detector.detector.registry import ModelEntry
from stream_detector.detector.retrain import recent_events, retrain
from stream_detector.detector.training import collect_windows, train
from stream_detector.engine.alerts import Alert, alert_id_for, episode_id_for
from stream_detector.engine.decode import Decoder
from stream_detector.engine.stage import WindowStage
from stream_detector.engine.types import Decoded, EventBatch
from stream_detector.kafka.feedback_send import alert_record
from stream_detector.kafka.retrain_command import (
    RetrainInputError,
    RetrainOptions,
    add_arguments,
    partition_shares,
    run,
    run_retrain,
)

pytestmark = pytest.mark.usefixtures("logging_left_as_found")

T0 = 1_700_000_000.0
KEYS = [f"sensor-{i}" for i in range(4)]
ANOMALOUS = "sensor-2"
ANOMALY = (250, 290)  # steps (seconds after T0) of the level shift on ANOMALOUS
STEPS = 400


def _settings() -> Settings:
    return load_settings(
        None,
        {
            "window": {"size": 8, "stride": 2},
            "model": {"hidden_size": 8, "latent_size": 4, "device": "cpu"},
            "train": {"epochs": 3, "patience": 3, "batch_size": 64, "seed": 3},
            "threshold": {"warmup": 20},
            "episodes": {"min_consecutive": 2, "cooldown": 3},
        },
    )


def _messages(n_steps: int, anomaly: tuple[int, int] | None, seed: int) -> list[bytes]:
    """A noisy sine per key, one event per key a second; a level shift on ANOMALOUS."""
    rng = np.random.default_rng(seed)
    lines = []
    for step in range(n_steps):
        for k, key in enumerate(KEYS):
            value = np.sin(step / 6.0 + k) * (1 + k) + rng.normal(0, 0.05) + 10 * k
            if anomaly and key == ANOMALOUS and anomaly[0] <= step < anomaly[1]:
                value += 6.0 * (1 + k)
            lines.append(orjson.dumps({"key": key, "ts": T0 + step, "value": float(value)}))
    return lines


def _batches(payloads: list[bytes], size: int = 200) -> list[Decoded]:
    decoder = Decoder(_settings().input)
    return [decoder.decode_messages(payloads[i : i + size]) for i in range(0, len(payloads), size)]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Models this small train faster on one thread than contending for a busy machine's
    cores (several times faster on a loaded two-core runner)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The active model, trained on normal data only."""
    out = tmp_path_factory.mktemp("active")
    train(_batches(_messages(300, None, seed=1)), _settings(), out)
    return out


@pytest.fixture(scope="module")
def active(model_dir: Path) -> ModelArtefact:
    return load_artefact(model_dir, _settings())


@pytest.fixture(scope="module")
def feed() -> list[bytes]:
    """Recent data: normal, but for the anomaly on ANOMALOUS the active model alerts on."""
    return _messages(STEPS, ANOMALY, seed=2)


def _windows(batches: list[Decoded], settings: Settings) -> list[Span]:
    """(key, start, end) of every training window, cut as training cuts them."""
    collected = collect_windows(batches, settings)
    stage = WindowStage(settings, collected.mean, collected.std, settings.train.stride)
    return [
        (str(key), float(start), float(end))
        for decoded in batches
        for staged in stage.pieces(decoded.batch)
        for key, start, end in zip(
            staged.due.keys, staged.due.start_ts, staged.due.end_ts, strict=True
        )
    ]


def _anomaly_alerts() -> list[Alert]:
    """What the service published on the anomaly: an episode opened by the first windows that
    take it in, resolved a cool-down after it."""
    first = opened(ANOMALOUS, T0 + ANOMALY[0] + 7)
    return [first, resolved(first, after_s=ANOMALY[1] - ANOMALY[0])]


def _overlapping(windows: list[Span], spans: list[Span]) -> list[Span]:
    """The windows that overlap a span of their key, one by one."""
    return [
        (key, start, end)
        for key, start, end in windows
        if any(k == key and start <= s_end and end >= s_start for k, s_start, s_end in spans)
    ]


# -- ExcludedSpans ---------------------------------------------------------------------------------


def test_spans_are_merged_per_key() -> None:
    spans = ExcludedSpans.from_pairs(
        [("a", 10, 20), ("a", 15, 30), ("a", 30, 35), ("a", 50, 60), ("b", 0, 5), ("a", 1, 2)]
    )
    spans.add("b", 3, 4)
    assert spans.spans("a") == [(1, 2), (10, 35), (50, 60)]  # overlapping and touching join
    assert spans.spans("b") == [(0, 5)]
    assert spans.spans("c") == []
    assert len(spans) == 4


def test_a_span_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="ends"):
        ExcludedSpans().add("a", 5, 4)


def test_overlapping_agrees_with_a_window_by_window_check() -> None:
    rng = np.random.default_rng(0)
    pairs = [
        (f"k{rng.integers(3)}", float(s), float(s + rng.integers(0, 20)))
        for s in rng.integers(0, 200, 12)
    ]
    spans = ExcludedSpans.from_pairs(pairs)
    keys = np.array([f"k{k}" for k in rng.integers(0, 5, 500)], dtype=object)
    start = rng.integers(0, 220, 500).astype(np.float64)
    end = start + rng.integers(0, 10, 500)
    expected = [
        any(k == key and s <= e_span and e >= s_span for k, s_span, e_span in pairs)
        for key, s, e in zip(keys, start, end, strict=True)
    ]
    assert spans.overlapping(keys, start, end).tolist() == expected
    assert ExcludedSpans().overlapping(keys, start, end).sum() == 0


# -- the episodes' spans, from their alerts --------------------------------------------------------


def test_an_episode_spans_its_opening_window_to_its_resolves_window() -> None:
    first = opened("a", T0 + 40)
    last = resolved(first, after_s=30)
    span = ("a", first.window_start, last.window_end)
    assert episode_spans([first, last]) == [span]
    # Read back from a topic, alerts may come in any order, and more than once.
    assert episode_spans([last, first, last, first]) == [span]


def test_an_episode_without_a_resolve_runs_on_and_one_without_an_open_starts_at_its_start() -> None:
    still_open = opened("a", T0 + 40)
    before_the_data = resolved(opened("b", T0 - 60), after_s=90)
    assert episode_spans([still_open, before_the_data]) == [
        ("a", still_open.window_start, math.inf),
        # From its episode_start: the end of its opening window.
        ("b", before_the_data.episode_start, before_the_data.window_end),
    ]


def test_a_resolve_ending_before_its_open_keeps_the_opening_window_out() -> None:
    first = opened("a", T0 + 40)
    damaged = resolved(first, after_s=-60)
    assert episode_spans([first, damaged]) == [("a", first.window_start, first.window_start)]


def test_alerts_read_back_from_their_cloudevents_give_the_same_spans() -> None:
    alerts = [*_anomaly_alerts(), opened("sensor-0", T0 + 12)]
    records = [alert_record(alert.to_cloudevent("test")) for alert in alerts]
    assert episode_spans(r for r in records if r is not None) == episode_spans(alerts)


def test_recent_episodes_keep_the_service_s_episodes_until_they_end_before_the_data() -> None:
    early, late, still_open = (opened(key, T0 + at) for key, at in (("a", 0), ("b", 50), ("c", 90)))
    recent = RecentEpisodes()
    recent.observe([early, late, still_open])
    recent.observe([resolved(early, after_s=20), resolved(late, after_s=20)])
    recent.forget_before(T0 + 30)  # the early one ended at T0 + 20
    assert recent.spans() == [
        ("b", late.window_start, T0 + 70),
        ("c", still_open.window_start, math.inf),
    ]


# -- the windows left out --------------------------------------------------------------------------


def test_windows_overlapping_a_span_are_left_out(feed: list[bytes]) -> None:
    settings = _settings()
    spans = episode_spans(_anomaly_alerts())
    labelled = [("sensor-1", T0 + 100, T0 + 120)]
    excluded = ExcludedSpans.from_pairs(spans + labelled)
    full = collect_windows(_batches(feed), settings)
    kept = collect_windows(_batches(feed), settings, excluded)
    windows = _windows(_batches(feed), settings)
    left_out = _overlapping(windows, spans + labelled)
    assert full.n_excluded == 0
    assert kept.n_excluded == len(left_out) > 0
    assert len(kept.windows) == len(full.windows) - len(left_out)
    assert any(key == "sensor-1" for key, _, _ in left_out)
    # Every window with an anomalous event is among them.
    anomaly = [(ANOMALOUS, T0 + ANOMALY[0], T0 + ANOMALY[1] - 1)]
    assert set(_overlapping(windows, anomaly)) <= set(left_out)


def test_retrain_leaves_out_episodes_and_true_positives_deterministically(
    feed: list[bytes],
) -> None:
    settings = _settings()
    episodes = episode_spans(_anomaly_alerts())
    labelled = [("sensor-1", T0 + 100, T0 + 120)]
    first = retrain(_batches(feed), settings, "lstm-ae-parent", labelled, episodes=episodes)
    again = retrain(_batches(feed), settings, "lstm-ae-parent", labelled, episodes=episodes)
    assert first.artefact.metadata.model_version == again.artefact.metadata.model_version
    left_out = _overlapping(_windows(_batches(feed), settings), episodes + labelled)
    assert first.excluded_windows == len(left_out)
    assert first.artefact.metadata.training["excluded_windows"] == len(left_out)
    assert first.episodes == 1 and first.parent == "lstm-ae-parent"
    assert first.data_span == (T0, T0 + STEPS - 1)
    assert first.report == first.report | {
        "events": STEPS * len(KEYS),
        "keys": len(KEYS),
        "excluded_windows": len(left_out),
        "episodes": 1,
        "labelled_spans": 1,
        "data_span": [T0, T0 + STEPS - 1],
        "parent": "lstm-ae-parent",
    }


def test_recent_events_keeps_the_last_ones() -> None:
    sizes = [5, 0, 7, 3, 6]
    batches, start = [], 0
    for size in sizes:
        ts = np.arange(start, start + size, dtype=np.float64)
        values = ts[:, None].astype(np.float32)
        keys = np.full(size, "k", dtype=object)
        batches.append(Decoded(EventBatch(np.arange(size, dtype=np.int64), keys, ts, values)))
        start += size
    for limit in (1, 6, 9, 16, 21, 100):
        kept = recent_events(iter(batches), limit)
        times = np.concatenate([d.batch.ts for d in kept])
        assert times.tolist() == list(range(max(0, 21 - limit), 21))


# -- the command -----------------------------------------------------------------------------------


def _true_positive(key: str, start: float, end: float, version: str) -> bytes:
    episode = episode_id_for(key, start, version)
    data = {
        "alert_id": alert_id_for(episode, "open"),
        "key": key,
        "episode_start": start,
        "model_version": version,
        "score": 5.0,
        "effective": end,
        "episode_end": end,
    }
    return feedback_envelope("true_positive", "tp-1", "test", key, data, end)


def _alerts_file(path: Path, alerts: list[Alert]) -> Path:
    path.write_bytes(b"".join(alert.to_cloudevent("test") + b"\n" for alert in alerts))
    return path


def _parse(command_line: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(command_line.split())


def test_the_command_writes_a_candidate(
    model_dir: Path,
    active: ModelArtefact,
    feed: list[bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, feedback, out = tmp_path / "recent.jsonl", tmp_path / "feedback.jsonl", tmp_path / "c"
    source.write_bytes(b"\n".join(feed) + b"\n")
    version = active.metadata.model_version
    feedback.write_bytes(_true_positive("sensor-1", T0 + 100, T0 + 120, version) + b"\n")
    alerts = _alerts_file(tmp_path / "alerts.jsonl", _anomaly_alerts())
    events = 1400  # the last 350 steps
    args = _parse(
        f"--input {source} --model {model_dir} --out {out} --feedback {feedback} "
        f"--alerts {alerts} --events {events}"
    )
    assert run(_settings(), args) == 0
    candidate = load_artefact(out, _settings())
    training = candidate.metadata.training
    assert training["events"] == events
    spans = [*episode_spans(_anomaly_alerts()), ("sensor-1", T0 + 100, T0 + 120)]
    recent = _batches(feed[-events:])
    assert training["excluded_windows"] == len(_overlapping(_windows(recent, _settings()), spans))
    captured = capsys.readouterr()
    assert f"candidate {candidate.metadata.model_version} written to {out}" in captured.out
    assert f"(parent {version})" in captured.out
    assert "of 1 episodes and 1 true positives" in captured.out
    assert "1970" not in captured.out and "from 2023-11-14T22:14:10.000Z" in captured.out
    assert "warning" not in captured.err


def test_the_command_refuses_what_it_cannot_use(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = _parse(f"--input {tmp_path / 'none.jsonl'} --out {tmp_path / 'c'}")
    assert run(_settings(), missing) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "feedback.jsonl"
    bad.write_text('{"specversion": "1.0"}\n')
    source = tmp_path / "recent.jsonl"
    source.write_bytes(b"\n".join(_messages(20, None, seed=0)))
    args = _parse(f"--input {source} --model {model_dir} --out {tmp_path} --feedback {bad}")
    assert run(_settings(), args) == 2
    assert "--feedback" in (err := capsys.readouterr().err) and "line 1" in err
    # An alert lost would be an anomaly trained on: a line that is not one is refused.
    alerts = _alerts_file(tmp_path / "alerts.jsonl", _anomaly_alerts())
    alerts.write_bytes(alerts.read_bytes() + b'{"specversion": "1.0"}\n')
    args = _parse(f"--input {source} --model {model_dir} --out {tmp_path} --alerts {alerts}")
    assert run(_settings(), args) == 2
    assert f"--alerts {alerts} line 3 is not an alert CloudEvent" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(f"--input {source} --from-topic --out {tmp_path}")


class _Registry:
    """The registry calls the command makes, recorded."""

    def __init__(self, active: str, directory: Path) -> None:
        self._active, self._directory = active, directory
        self.registered: list[dict[str, Any]] = []
        self.reports: list[tuple[str, str, dict[str, Any]]] = []

    def active(self) -> str:
        return self._active

    def artefact_dir(self, version: str) -> Path:
        assert version == self._active
        return self._directory

    def register(self, artefact_dir: Path, **fields: Any) -> ModelEntry:
        self.registered.append({"artefact_dir": artefact_dir, **fields})
        version = load_artefact(artefact_dir, _settings()).metadata.model_version
        return ModelEntry(version, "", "", fields["source"], fields["parent"], None, {})

    def attach_report(self, version: str, name: str, report: dict[str, Any]) -> None:
        self.reports.append((version, name, report))


def test_register_puts_the_candidate_in_the_registry(
    model_dir: Path,
    active: ModelArtefact,
    feed: list[bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, out = tmp_path / "recent.jsonl", tmp_path / "candidate"
    source.write_bytes(b"\n".join(feed) + b"\n")
    version = active.metadata.model_version
    registry = _Registry(version, model_dir)
    options = RetrainOptions(out=out, events=10_000, input=source, register=True)
    result = run_retrain(options, _settings(), registry)  # type: ignore[arg-type]
    assert registry.registered == [
        {
            "artefact_dir": out,
            "source": "retrain:file",
            "parent": version,
            "data_span": (T0, T0 + STEPS - 1),
        }
    ]
    candidate = result.artefact.metadata.model_version
    assert registry.reports == [(candidate, "retrain", result.report)]
    # Without alerts nothing but the true positives (none here) is left out, and it says so.
    assert result.episodes == 0 and result.excluded_windows == 0
    warning = capsys.readouterr().err
    assert "warning: no alerts" in warning and "--alerts FILE" in warning
    with pytest.raises(RetrainInputError, match="registry"):
        run_retrain(options, _settings(), None)


def test_partition_shares_give_a_short_partitions_rest_to_the_others() -> None:
    assert partition_shares(600, [800, 0, 800]) == [300, 0, 300]
    assert partition_shares(10, [100, 100, 100]) == [4, 3, 3]
    assert partition_shares(100, [10, 1000, 30]) == [10, 60, 30]
    assert partition_shares(100, [10, 20]) == [10, 20]
    assert sum(partition_shares(1001, [7, 500, 500, 3])) == 1001
