"""Swapping the detector's model between batches, and a candidate scoring in the active's shadow.

A swap keeps what does not depend on the model (every key's windows and normalisation) and
starts again what does: thresholds warm up on the new model's calibrated threshold, open
episodes resolve with reason "model_changed", and later alerts carry the new version. A shadow
must not change one decision of the active model, nor enter a snapshot.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from stream_detector.aggregate.decoder import decoder_for
from stream_detector.config import Settings, load_settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.facade import DetectionResult, Detector
from stream_detector.detector.training import train

T0 = 1_700_000_000.0
SECTIONS: dict[str, Any] = {
    "window": {"size": 4, "stride": 1},
    "normalize": {"warmup": 5},
    "model": {"hidden_size": 4, "latent_size": 2, "device": "cpu"},
    "train": {"epochs": 1, "batch_size": 64, "max_windows": 400},
    "threshold": {"warmup": 10, "sensitivity": 3.0},
    "episodes": {"min_consecutive": 1, "cooldown": 3},
    "lifecycle": {"shadow_windows": 50},
}
KEYS = ("k0", "k1", "k2")


def _settings() -> Settings:
    return load_settings(None, SECTIONS)


def _payloads(steps: range, seed: int, shift_at: tuple[int, ...] = ()) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in steps:
        for k, key in enumerate(KEYS):
            value = np.sin(i / 3 + k) + rng.normal(0, 0.1) + (5.0 if i in shift_at else 0.0)
            out.append(orjson.dumps({"key": key, "ts": T0 + i, "value": float(value)}))
    return out


def _train(seed: int) -> ModelArtefact:
    settings = load_settings(None, {**SECTIONS, "train": {**SECTIONS["train"], "seed": seed}})
    batch = decoder_for(settings).decode_messages(_payloads(range(200), seed=seed))
    return train([batch], settings, out_dir=None)


@pytest.fixture(scope="module")
def models() -> tuple[ModelArtefact, ModelArtefact]:
    first, second = _train(0), _train(1)
    assert first.metadata.model_version != second.metadata.model_version
    return first, second


def _run(detector: Detector, payloads: list[bytes]) -> DetectionResult:
    return detector.process(decoder_for(detector.settings).decode_messages(payloads))


def test_a_swap_keeps_windows_and_resolves_open_episodes_with_the_old_version(
    models: tuple[ModelArtefact, ModelArtefact],
) -> None:
    old, new = models
    detector = Detector(_settings(), old)
    # A step held to the end: the episodes are open when the model changes.
    opened = _run(detector, _payloads(range(60), seed=3, shift_at=tuple(range(50, 60)))).alerts
    open_before = detector.open_episodes
    assert open_before > 0
    keys_before = detector.n_keys
    resolved = detector.swap_model(new)
    assert resolved and all(a.kind == "resolve" for a in resolved)
    # One resolve per open episode, each naming its own key.
    assert sorted(a.key for a in resolved) == sorted({a.key for a in resolved})
    assert len(resolved) == open_before
    open_ids = {a.key: a.episode_id for a in opened if a.kind == "open"}
    assert {a.key: a.episode_id for a in resolved}.items() <= open_ids.items()
    assert {a.reason for a in resolved} == {"model_changed"}
    assert {a.model_version for a in resolved} == {old.metadata.model_version}
    assert detector.open_episodes == 0
    assert detector.n_keys == keys_before, "windows are kept across the swap"
    assert detector.model_version == new.metadata.model_version
    assert detector.metadata is new.metadata

    after = _run(detector, _payloads(range(60, 120), seed=4, shift_at=(100, 101)))
    # Windows were kept: every key is scored from the first event after the swap.
    assert len(after.scored) == len(KEYS) * 60
    # Thresholds start again from the new model's warm-up threshold.
    first = after.scored.thresholds[: len(KEYS)]
    assert np.allclose(first, new.metadata.global_threshold, rtol=1e-6)
    assert all(a.model_version == new.metadata.model_version for a in after.alerts)


def test_a_shadow_changes_nothing_the_active_model_decides(
    models: tuple[ModelArtefact, ModelArtefact],
) -> None:
    active, candidate = models
    payloads = _payloads(range(150), seed=5, shift_at=(60, 61, 110))
    plain = Detector(_settings(), active)
    shadowed = Detector(_settings(), active)
    shadowed.start_shadow(candidate)
    windows = 0
    for start in range(0, len(payloads), 37):
        piece = payloads[start : start + 37]
        a, b = _run(plain, piece), _run(shadowed, piece)
        windows += len(a.scored)
        assert [x.alert_id for x in a.alerts] == [x.alert_id for x in b.alerts]
        np.testing.assert_array_equal(a.scored.thresholds, b.scored.thresholds)
        np.testing.assert_array_equal(a.scored.exceed, b.scored.exceed)
    shadow = shadowed.shadow
    assert shadow is not None and shadow.done
    report = shadow.report()
    assert report["windows"] == windows, "the candidate judged every window the active did"
    assert report["candidate"]["model_version"] == candidate.metadata.model_version
    assert report["active"]["model_version"] == active.metadata.model_version
    assert report["verdict"] in ("pass", "fail") and report["why"]
    assert 0.0 <= report["key_agreement"] <= 1.0


def test_a_shadow_stays_out_of_snapshots_and_a_promotion_stops_it(
    models: tuple[ModelArtefact, ModelArtefact],
) -> None:
    active, candidate = models
    detector = Detector(_settings(), active)
    detector.start_shadow(candidate)
    _run(detector, _payloads(range(40), seed=6))
    snapshot = detector.snapshot(KEYS)
    assert not [name for name in snapshot.arrays if name.startswith("shadow.")]
    restored = Detector(_settings(), active)
    assert restored.restore(snapshot) == len(KEYS)

    detector.swap_model(candidate)
    assert detector.shadow is None, "promoting the shadow's version makes it the active model"
    assert detector.model_version == candidate.metadata.model_version


def test_the_shadow_verdict_compares_episodes_and_score_drift(
    models: tuple[ModelArtefact, ModelArtefact],
) -> None:
    active, candidate = models
    detector = Detector(_settings(), active)
    detector.start_shadow(candidate)
    _run(detector, _payloads(range(80), seed=7, shift_at=(50, 51)))
    shadow = detector.shadow
    assert shadow is not None
    report = shadow.report()
    cand, act = report["candidate"], report["active"]
    allowed = detector.settings.lifecycle.promote_max_alert_ratio * act["episodes_opened"]
    expected = cand["episodes_opened"] <= allowed and cand["score_psi"] < act["score_psi"]
    assert (report["verdict"] == "pass") == expected, report


def test_a_shadow_opens_new_key_episodes_as_the_active_model_does(
    models: tuple[ModelArtefact, ModelArtefact],
) -> None:
    """Both models were trained on k0..k2: a fourth key opens an episode on each side, so an
    open on it later is absorbed alike and the two sides' episode counts compare fairly."""
    active, candidate = models
    settings = load_settings(
        None, {**SECTIONS, "episodes": {**SECTIONS["episodes"], "alert_new_keys": True}}
    )
    detector = Detector(settings, active)
    detector.start_shadow(candidate)
    newcomer = orjson.dumps({"key": "k9", "ts": T0 + 1, "value": 0.5})
    result = _run(detector, [*_payloads(range(2), seed=7), newcomer])
    assert [(a.key, a.reason) for a in result.alerts] == [("k9", "new_key")]
    shadow = detector.shadow
    assert shadow is not None
    assert detector.open_episodes == shadow.judge.episodes.open_episodes == 1
