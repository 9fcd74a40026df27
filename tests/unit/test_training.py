"""Training: windows cut like serving, seeded reproducibility, early stopping, calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stream_detector.config import Settings, WindowConfig
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.exclusions import ExcludedSpans
from stream_detector.detector.judge import ModelJudge
from stream_detector.detector.mapping import input_mapping
from stream_detector.detector.training import (
    MIN_TRAINING_WINDOWS,
    _trimmed_loss,
    collect_windows,
    train,
)
from stream_detector.engine.model import WindowScorer
from stream_detector.engine.types import Decoded, EventBatch

CPU = torch.device("cpu")
WINDOW = 8


def _settings(warmup: int = 0, clip_sigma: float = 4.0, **train: Any) -> Settings:
    return Settings(
        input={"value_fields": ("a", "b")},
        # Short keys and no warm-up by default: the prior gives their first windows a scale.
        normalize={"warmup": warmup, "prior_weight": 4.0, "clip_sigma": clip_sigma},
        window={"size": WINDOW, "initial_capacity": 2},
        model={"hidden_size": 8, "latent_size": 4, "device": "cpu", "batch_size": 64},
        train={"epochs": 3, "batch_size": 64, "learning_rate": 1e-2, **train},
    )


def _collected(
    batches: list[Decoded], settings: Settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    collected = collect_windows(batches, settings)
    return collected.windows, collected.mean, collected.std


def _batches(
    n_keys: int = 4, per_key: int = 60, batch_size: int = 50, seed: int = 0
) -> list[Decoded]:
    """Interleaved sine-like events of several keys, split into decode-sized batches."""
    rng = np.random.default_rng(seed)
    step, key_no = _round_robin(n_keys, per_key)
    a = np.sin(step * 0.7 + key_no) + 0.05 * rng.normal(size=len(step))
    b = 100.0 + 10.0 * np.cos(step * 0.3) + key_no
    return _decoded(step, key_no, np.stack([a, b], axis=1), batch_size)


def _round_robin(n_keys: int, per_key: int) -> tuple[np.ndarray, np.ndarray]:
    """(step, key_no) of `per_key` events per key, round-robin over keys, time increasing."""
    step = np.tile(np.arange(per_key), n_keys)
    key_no = np.repeat(np.arange(n_keys), per_key)
    order = np.argsort(step, kind="stable")
    return step[order], key_no[order]


def _decoded(
    step: np.ndarray, key_no: np.ndarray, values: np.ndarray, batch_size: int
) -> list[Decoded]:
    """Events of keys `k<key_no>` at times 1.7e9 + step, split into decode-sized batches."""
    values = values.astype(np.float32)
    keys = np.array([f"k{k}" for k in key_no], dtype=object)
    ts = 1_700_000_000.0 + step.astype(np.float64)
    out = []
    for start in range(0, len(step), batch_size):
        sl = slice(start, start + batch_size)
        n = len(keys[sl])
        batch = EventBatch(np.arange(n, dtype=np.int64), keys[sl], ts[sl], values[sl])
        out.append(Decoded(batch=batch))
    return out


def test_collected_windows_match_what_the_window_store_emits() -> None:
    settings = _settings(stride=3)
    windows, mean, std = _collected(_batches(n_keys=4, per_key=60), settings)
    per_key = (60 - WINDOW) // 3 + 1
    assert windows.shape == (4 * per_key, WINDOW, 2)
    assert windows.dtype == np.float32
    assert np.isfinite(windows).all()
    values = np.concatenate([d.batch.values for d in _batches()]).astype(np.float64)
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, values.std(axis=0), rtol=1e-4)
    # Normalised: feature b lives around 100 in raw units but near 0 here.
    assert abs(float(windows[..., 1].mean())) < 3.0


def test_keys_in_normalisation_warmup_give_no_windows() -> None:
    # The service does not score a key before normalize.warmup events; training must not
    # learn from such windows either. Batches of 50 interleave 4 keys: ~12 events per key each.
    # No clipping: it starts after the warm-up, so the statistics would differ too.
    all_windows, _, _ = _collected(_batches(), _settings(0, clip_sigma=0.0))
    warm_windows, _, _ = _collected(_batches(), _settings(40, clip_sigma=0.0))
    assert 0 < len(warm_windows) < len(all_windows)
    np.testing.assert_array_equal(warm_windows, all_windows[-len(warm_windows) :])


def test_global_std_is_floored_for_a_constant_feature() -> None:
    batches = _batches()
    for d in batches:
        d.batch.values[:, 0] = 5.0
    settings = _settings()
    _, mean, std = _collected(batches, settings)
    assert mean[0] == pytest.approx(5.0)
    assert std[0] == pytest.approx(settings.normalize.min_std)


def test_window_cap_keeps_a_seeded_subset() -> None:
    full, _, _ = _collected(_batches(), _settings())
    first, _, _ = _collected(_batches(), _settings(max_windows=20))
    again, _, _ = _collected(_batches(), _settings(max_windows=20))
    assert first.shape == (20, WINDOW, 2)
    np.testing.assert_array_equal(first, again)
    flat_full = {w.tobytes() for w in full}
    assert all(w.tobytes() in flat_full for w in first)


def test_too_few_events_per_key_is_explained() -> None:
    with pytest.raises(ValueError) as info:
        _collected(_batches(n_keys=3, per_key=WINDOW - 1), _settings())
    message = str(info.value)
    assert "21 events over 3 keys" in message
    assert f"window.size = {WINDOW}" in message


def test_too_few_windows_is_refused() -> None:
    per_key = WINDOW + MIN_TRAINING_WINDOWS - 2  # one key, MIN - 1 windows
    with pytest.raises(ValueError, match=f"gave {MIN_TRAINING_WINDOWS - 1} windows"):
        train(_batches(n_keys=1, per_key=per_key), _settings(), None)


def test_no_events_is_refused() -> None:
    empty = Decoded(batch=EventBatch.empty(2))
    with pytest.raises(ValueError, match="no valid events"):
        train([empty], _settings(), None)


def test_same_seed_gives_identical_weights() -> None:
    first = train(_batches(), _settings(seed=7), None)
    second = train(_batches(), _settings(seed=7), None)
    other = train(_batches(), _settings(seed=8), None)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert first.metadata.model_version == second.metadata.model_version
    assert other.metadata.model_version != first.metadata.model_version


def test_early_stopping_ends_training_when_validation_loss_stalls() -> None:
    # A learning rate far below float32 resolution leaves the weights, hence the loss, unchanged.
    updates: list[dict[str, Any]] = []
    artefact = train(
        _batches(), _settings(epochs=20, patience=2, learning_rate=1e-20), None, updates.append
    )
    summary = artefact.metadata.training
    assert summary["epochs_run"] == 3
    assert summary["stopped_early"] is True
    assert summary["best_epoch"] == 1
    assert [u["epoch"] for u in updates] == [1, 2, 3]
    assert [u["best"] for u in updates] == [True, False, False]
    assert all(u["epochs"] == 20 for u in updates)


def test_training_improves_and_keeps_the_best_epoch() -> None:
    updates: list[dict[str, Any]] = []
    artefact = train(_batches(), _settings(epochs=6, patience=6), None, updates.append)
    summary = artefact.metadata.training
    val = summary["val_loss"]
    assert len(val) == len(summary["train_loss"]) == 6
    assert val[-1] < val[0]
    assert summary["best_epoch"] == int(np.argmin(val)) + 1
    assert summary["best_val_loss"] == min(val)
    assert [u["val_loss"] for u in updates] == val


def test_a_trimmed_loss_leaves_the_worst_reconstructed_windows_out_of_the_fit() -> None:
    # Mostly normal training data: the windows a batch reconstructs worst are where its few
    # anomalies sit. The trimmed loss is the mean error of the rest, and gives the left-out
    # windows no gradient, so the model is not pulled towards reproducing them.
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(20, WINDOW, 2)).astype(np.float32))
    noise = torch.from_numpy(rng.normal(scale=0.1, size=x.shape).astype(np.float32))
    reconstruction = (x + noise).requires_grad_()
    with torch.no_grad():
        reconstruction[[4, 11]] += 5.0  # two windows far worse reconstructed than the others
    loss = _trimmed_loss(reconstruction, x, 0.1)
    loss.backward()
    assert reconstruction.grad is not None
    per_window = (reconstruction - x).square().mean(dim=(1, 2)).detach()
    kept = torch.ones(20, dtype=torch.bool)
    kept[[4, 11]] = False
    assert float(loss.detach()) == pytest.approx(float(per_window[kept].mean()), rel=1e-6)
    assert torch.all(reconstruction.grad[~kept] == 0)
    assert torch.all(reconstruction.grad[kept].abs().sum(dim=(1, 2)) > 0)
    untrimmed = _trimmed_loss(reconstruction, x, 0.0)
    assert float(untrimmed.detach()) == pytest.approx(float(per_window.mean()), rel=1e-6)


def test_calibration_quantiles_are_monotone_and_set_the_threshold() -> None:
    artefact = train(_batches(), _settings(calibration_quantile=0.95), None)
    meta = artefact.metadata
    levels = sorted(meta.calibration_quantiles, key=float)
    assert {"0.5", "0.9", "0.99", "0.995", "0.999", "0.95"} <= set(levels)
    values = [meta.calibration_quantiles[q] for q in levels]
    assert all(lo <= hi for lo, hi in zip(values, values[1:], strict=False))
    assert values[0] > 0
    assert meta.global_threshold == meta.calibration_quantiles["0.95"]


def test_threshold_is_calibrated_on_the_scores_serving_computes() -> None:
    settings = _settings()
    artefact = train(_batches(), settings, None)
    windows, _, _ = _collected(_batches(), settings)
    scores = WindowScorer(artefact.model, CPU, 64).score(windows).scores
    # The 0.995 quantile of held-out scores sits in the upper tail of all training windows.
    assert np.mean(scores <= artefact.metadata.global_threshold) > 0.9


def test_score_steps_change_the_calibration_and_the_serving_scores() -> None:
    """`train` calibrates on the scores serving will compute (here the newest two steps'
    errors), and the judge computes them. One epoch, so that early stopping, which also judges
    those scores, has no epoch to choose and both runs keep the same weights."""
    whole = train(_batches(), _settings(epochs=1), None)
    settings = _settings(epochs=1).model_copy(
        update={"window": WindowConfig(size=WINDOW, initial_capacity=2, score_steps=2)}
    )
    newest = train(_batches(), settings, None)
    for a, b in zip(
        whole.model.state_dict().values(), newest.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert newest.metadata.calibration_quantiles != whole.metadata.calibration_quantiles
    means = newest.metadata.feature_error_means
    assert means is not None  # the newest steps' errors: they average to the validation loss
    assert float(np.mean(means)) == pytest.approx(newest.metadata.training["best_val_loss"])
    windows, _, _ = _collected(_batches(), settings)
    expected = WindowScorer(newest.model, CPU, 64, score_steps=2).score(windows).scores
    served = ModelJudge(settings, newest, CPU).scorer.score(windows).scores
    np.testing.assert_array_equal(served, expected)


def test_feature_error_means_are_the_validation_windows_mean_errors() -> None:
    """Per feature, what drift compares the live errors with: a window's score is the mean of
    its feature errors, so their means average to the best validation loss (the mean score)."""
    meta = train(_batches(), _settings(), None).metadata
    means = meta.feature_error_means
    assert means is not None and len(means) == len(meta.features)
    assert all(m > 0 for m in means)
    assert float(np.mean(means)) == pytest.approx(meta.training["best_val_loss"], rel=1e-5)


def test_out_dir_gets_a_loadable_artefact(tmp_path: Path) -> None:
    settings = _settings()
    trained = train(_batches(), settings, tmp_path / "model")
    loaded = load_artefact(tmp_path / "model", settings, CPU)
    assert loaded.metadata == trained.metadata
    # How records became keys, times and features, for replay and run to read data alike.
    assert loaded.metadata.input_mapping == input_mapping(settings)
    windows, mean, std = _collected(_batches(), settings)
    np.testing.assert_allclose(loaded.metadata.norm_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(loaded.metadata.norm_std, std, rtol=1e-6)
    scores_trained = WindowScorer(trained.model, CPU, 64).score(windows).scores
    scores_loaded = WindowScorer(loaded.model, CPU, 64).score(windows).scores
    np.testing.assert_array_equal(scores_loaded, scores_trained)
    summary = loaded.metadata.training
    assert summary["windows"] == len(windows)
    assert summary["train_windows"] + summary["val_windows"] == len(windows)
    assert summary["keys"] == 4 and summary["events"] == 240
    assert summary["seed"] == 0 and summary["device"] == "cpu"


def test_small_data_is_warned_about_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    """4 keys x 60 events give 212 windows: 42 validation windows cannot carry a 0.995
    quantile (it is their maximum), and the artefact keeps the warnings beside the fit."""
    artefact = train(_batches(), _settings(), None)
    warnings = artefact.metadata.training["warnings"]
    assert any("0.995 of 42 validation windows is their maximum" in w for w in warnings)
    assert any("212 training windows are few" in w for w in warnings)
    roomy = train(_batches(), _settings(calibration_quantile=0.9), None)
    assert not any("validation windows" in w for w in roomy.metadata.training["warnings"])


def test_the_training_keys_are_the_keys_with_a_training_window() -> None:
    """A key with too few events for a window, or whose windows were all left out, was not
    trained on: it is recorded as no training key, and so stays news to the new-key rule."""
    batches = _batches(n_keys=3)
    short = EventBatch(
        np.arange(3, dtype=np.int64), np.array(["brief"] * 3, dtype=object),
        1_700_000_100.0 + np.arange(3.0), np.zeros((3, 2), np.float32),
    )  # fmt: skip
    excluded = ExcludedSpans()
    excluded.add("k2", 1_699_999_999.0, 1_700_001_000.0)
    collected = collect_windows([*batches, Decoded(batch=short)], _settings(), excluded)
    assert collected.n_keys == 4
    assert collected.trained_keys == ("k0", "k1")
    artefact = train(batches, _settings(), None)
    assert artefact.metadata.training_keys == ("k0", "k1", "k2")


def test_more_keys_than_the_artefact_carries_are_not_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("stream_detector.detector.training.MAX_TRAINING_KEY_BYTES", 7)
    artefact = train(_batches(n_keys=4), _settings(), None)  # "k0".."k3": 8 bytes
    assert artefact.metadata.training_keys is None
    warnings = artefact.metadata.training["warnings"]
    assert any("4 training keys are more than the artefact records" in w for w in warnings)


def test_averaged_weights_steady_the_validation_loss() -> None:
    # The weights an epoch ends with swing with its last batches, and the validation loss that
    # picks the best epoch swings with them; averaged over about an epoch of steps, it falls with
    # far fewer rises on the way (here none, against 0.17 in all without).
    data = _batches(n_keys=8, per_key=100)

    def validation_rises(average_epochs: float) -> float:
        settings = _settings(
            epochs=20, patience=20, learning_rate=3e-2, average_epochs=average_epochs
        )
        artefact = train(data, settings, None)
        assert artefact.metadata.training["average_epochs"] == average_epochs
        return float(np.clip(np.diff(artefact.metadata.training["val_loss"]), 0, None).sum())

    assert validation_rises(1.0) < 0.5 * validation_rises(0.0)
