"""The demo's bundled model: it fits the demo's settings, detects on the demo feed, and the
training path that made it (and that `demo --train` uses) reads the feed like the service."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_detector.demo import bundled
from stream_detector.demo.offline import feed_batches, score_offline, train_from_feed
from stream_detector.demo.scenario import (
    BUNDLED_MODEL_DIR,
    DEMO_SEED,
    WARMUP_TICKS,
    demo_settings,
    generator_config,
)
from stream_detector.demo.scoreboard import Score
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.scenarios.telemetry import GeneratorConfig, TelemetryGenerator


def test_bundled_model_is_small_and_fits_the_demo_settings() -> None:
    assert sum(f.stat().st_size for f in BUNDLED_MODEL_DIR.iterdir()) < 200_000
    feed = generator_config()
    artefact = load_artefact(BUNDLED_MODEL_DIR, demo_settings(feed, {"model": {"device": "cpu"}}))
    assert artefact.metadata.training["device"] == "cpu"  # reproducible: CPU, fixed seeds


def test_bundled_model_finds_most_injected_anomalies_without_flooding() -> None:
    # A different seed from the bundled model's training feed and fewer devices than the demo.
    feed = generator_config(devices=100, seed=11)
    settings = demo_settings(feed, {"model": {"device": "cpu"}})
    artefact = load_artefact(BUNDLED_MODEL_DIR, settings)
    score = score_offline(feed, WARMUP_TICKS + 500, settings, artefact)
    assert score.injected >= 30
    assert score.recall is not None and score.recall >= 0.6
    assert score.precision is not None and score.precision >= 0.6


def test_the_backlog_leaves_every_device_judged_by_its_own_threshold() -> None:
    # The live feed's first windows are judged by each device's own threshold, not by the
    # warm-up one (the global threshold x global_factor), which is too low for noisy devices.
    feed = generator_config(devices=20, seed=3)
    settings = demo_settings(feed, {"model": {"device": "cpu"}})
    artefact = load_artefact(BUNDLED_MODEL_DIR, settings)
    detector = Detector(settings, artefact)
    warmup_threshold = np.float32(
        artefact.metadata.global_threshold * settings.threshold.global_factor
    )
    live_from = feed.start_ts + feed.warmup_s
    judged: dict[str, list[float]] = {}
    for decoded in feed_batches(TelemetryGenerator(feed), WARMUP_TICKS + 8, detector.decoder):
        scored = detector.process(decoded).scored
        live = scored.end_ts >= live_from
        for key, threshold in zip(scored.keys[live], scored.thresholds[live], strict=True):
            judged.setdefault(str(key), []).append(float(threshold))
    assert len(judged) == 20, "every device has live windows"
    for key, thresholds in judged.items():
        assert warmup_threshold not in thresholds, f"{key} is still warming up when live"


TINY = {
    "window": {"size": 8, "stride": 2},
    "normalize": {"warmup": 8},
    "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
    "train": {"epochs": 1, "max_windows": 400},
}


def test_train_from_feed_fits_on_the_warm_up_stretch(tmp_path: Path) -> None:
    feed = generator_config(devices=4)
    settings = demo_settings(feed, TINY)
    artefact = train_from_feed(feed, 60, settings, tmp_path)
    assert artefact.metadata.features == settings.input.value_fields
    assert artefact.metadata.training["events"] == 4 * 60
    reloaded = load_artefact(tmp_path, settings)
    assert reloaded.metadata.model_version == artefact.metadata.model_version


def test_train_from_feed_refuses_readings_past_the_anomaly_free_warm_up() -> None:
    feed = generator_config(devices=4)
    with pytest.raises(ValueError, match="warm-up"):
        train_from_feed(feed, WARMUP_TICKS + 1, demo_settings(feed, TINY), None)
    # A feed without anomalies may be trained on for as long as wanted.
    clean = replace(feed, anomaly_rate=0.0)
    train_from_feed(clean, WARMUP_TICKS + 1, demo_settings(clean, TINY), None)


@pytest.mark.parametrize(("argv", "seed"), [([], DEMO_SEED), (["--seed", "7"], 7)])
def test_the_check_scores_the_demo_feed_of_the_seed_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], seed: int
) -> None:
    """`--seed` checks the bundled model on another draw of the demo feed (the spread of its
    figures); without it, on the live demo's own feed."""
    scored: list[GeneratorConfig] = []

    def fake_score(feed: GeneratorConfig, *_: object) -> Score:
        scored.append(feed)
        return Score(injected=1, detected=1, episodes=1, true_episodes=1, pending=0)

    monkeypatch.setattr(bundled, "score_offline", fake_score)
    assert bundled.main(["--check-only", *argv]) == 0
    assert [feed.seed for feed in scored] == [seed]
    assert orjson.loads(capsys.readouterr().out)["precision"] == 1.0
