"""Drift figures on scores of known distributions: the training one, a shifted one, a step."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from stream_detector.config import ConfigError, DriftConfig, Settings
from stream_detector.detector.drift import (
    DriftMonitor,
    calibration_bins,
    drift_fields,
    model_age_days,
    psi,
)
from stream_detector.engine.types import ScoredWindows
from stream_detector.kafka.telemetry import ServiceMetrics

LEVELS = (0.5, 0.9, 0.99, 0.995, 0.999)
FEATURES = ("cpu", "latency", "errors")
# The validation windows' mean error per feature, as `train` stores them.
TRAINING_ERRORS = (0.2, 1.0, 0.05)


def _training_quantiles(seed: int = 0) -> dict[str, float]:
    """Validation-score quantiles of a log-normal score distribution, as `train` stores them."""
    scores = np.random.default_rng(seed).lognormal(0.0, 1.0, 1_000_000)
    return {f"{q:g}": float(v) for q, v in zip(LEVELS, np.quantile(scores, LEVELS), strict=True)}


def _scored(
    scores: np.ndarray, exceed: np.ndarray | None = None, errors: np.ndarray | None = None
) -> ScoredWindows:
    n = len(scores)
    f = np.zeros((n, 1), dtype=np.float32)
    return ScoredWindows(
        slots=np.arange(n, dtype=np.int64),
        keys=np.array([f"k{i}" for i in range(n)], dtype=object),
        event_index=np.arange(n, dtype=np.int64),
        start_ts=np.zeros(n),
        end_ts=np.zeros(n),
        scores=scores.astype(np.float32),
        thresholds=np.ones(n, dtype=np.float32),
        exceed=np.zeros(n, dtype=bool) if exceed is None else exceed,
        feature_errors=f if errors is None else errors.astype(np.float32),
        actual=f,
        expected=f,
        flat=np.zeros((n, 1), dtype=bool),
    )


def _monitor(**settings: float) -> DriftMonitor:
    quantiles = _training_quantiles()
    return DriftMonitor(
        DriftConfig(**settings), quantiles, global_threshold=quantiles["0.99"],
        created_at="2026-01-01T00:00:00+00:00",
    )


def _feed(monitor: DriftMonitor, scores: np.ndarray, batch: int = 500) -> None:
    for start in range(0, len(scores), batch):
        monitor.update(_scored(scores[start : start + batch]))


def _feature_monitor(
    means: tuple[float, ...] | None = TRAINING_ERRORS, **settings: float
) -> DriftMonitor:
    quantiles = _training_quantiles()
    return DriftMonitor(
        DriftConfig(**settings), quantiles, global_threshold=quantiles["0.99"],
        features=FEATURES, feature_error_means=means,
    )


def _errors(n: int, seed: int, scale: tuple[float, ...] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """[n, F] per-window errors like the training ones (squared-normal noise around each
    feature's training mean), each feature's multiplied by `scale`."""
    noise = np.random.default_rng(seed).chisquare(4, size=(n, len(FEATURES))) / 4.0
    return noise * np.asarray(TRAINING_ERRORS) * np.asarray(scale)


def _feed_errors(monitor: DriftMonitor, errors: np.ndarray, batch: int = 500) -> None:
    scores = errors.mean(axis=1)
    for start in range(0, len(errors), batch):
        stop = start + batch
        monitor.update(_scored(scores[start:stop], errors=errors[start:stop]))


def test_bins_carry_the_expected_shares_and_merge_tied_quantiles() -> None:
    edges, shares = calibration_bins({"0.5": 1.0, "0.9": 2.0, "0.99": 3.0})
    assert edges.tolist() == [1.0, 2.0, 3.0]
    assert shares == pytest.approx([0.5, 0.4, 0.09, 0.01])
    edges, shares = calibration_bins({"0.5": 1.0, "0.9": 1.0, "0.99": 3.0})
    assert edges.tolist() == [1.0, 3.0]
    assert shares == pytest.approx([0.5, 0.49, 0.01])
    assert psi(shares, shares) == 0.0


def test_scores_from_the_training_distribution_show_no_drift() -> None:
    monitor = _monitor()
    _feed(monitor, np.random.default_rng(1).lognormal(0.0, 1.0, 60_000))
    figures = monitor.figures()
    assert figures.psi < 0.02
    assert figures.median_ratio == pytest.approx(1.0, abs=0.05)
    assert figures.expected_over_threshold_share == pytest.approx(0.01)
    assert figures.over_threshold_share == 0.0
    assert not figures.retrain_due and figures.reason == "none"


def test_scores_three_times_larger_are_drift_and_make_retraining_due() -> None:
    monitor = _monitor()
    _feed(monitor, 3.0 * np.random.default_rng(2).lognormal(0.0, 1.0, 60_000))
    figures = monitor.figures()
    assert figures.psi > 0.25
    assert figures.median_ratio == pytest.approx(3.0, rel=0.05)
    assert figures.retrain_due and "psi_bound" in figures.reason


def test_too_few_windows_give_no_psi_and_no_verdict() -> None:
    monitor = _monitor(min_windows=1000)
    _feed(monitor, 10.0 * np.random.default_rng(3).lognormal(0.0, 1.0, 500))
    figures = monitor.figures()
    assert math.isnan(figures.psi) and not figures.retrain_due
    assert figures.median_ratio > 5  # the median is reported all the same


def test_the_horizon_follows_a_step_change() -> None:
    """After a step from the training scores to shifted ones, the figures move over; a window's
    weight halves every half_life_windows, so the old scores fade within a few half-lives."""
    monitor = _monitor(half_life_windows=2000)
    rng = np.random.default_rng(4)
    _feed(monitor, rng.lognormal(0.0, 1.0, 20_000))
    assert monitor.figures().psi < 0.02
    _feed(monitor, 3.0 * rng.lognormal(0.0, 1.0, 2000))  # one half-life: half the weight new
    halfway = monitor.figures()
    assert 0.05 < halfway.psi < 0.9
    assert 1.2 < halfway.median_ratio < 2.5
    _feed(monitor, 3.0 * rng.lognormal(0.0, 1.0, 18_000))
    after = monitor.figures()
    assert after.psi > 0.25 and after.psi > halfway.psi
    assert after.median_ratio == pytest.approx(3.0, rel=0.05)
    # Batches of any size fold in alike: one window at a time gives the same counts.
    one, many = _monitor(half_life_windows=50), _monitor(half_life_windows=50)
    scores = rng.lognormal(0.0, 1.0, 300)
    _feed(one, scores, batch=1)
    _feed(many, scores, batch=300)
    assert one.figures().windows == pytest.approx(many.figures().windows)
    assert one.figures().median_ratio == pytest.approx(many.figures().median_ratio)


def test_over_threshold_share_is_the_decayed_share_of_exceeding_windows() -> None:
    monitor = _monitor(half_life_windows=10**9)
    exceed = np.zeros(1000, dtype=bool)
    exceed[::20] = True
    monitor.update(_scored(np.ones(1000), exceed))
    assert monitor.figures().over_threshold_share == pytest.approx(0.05, rel=1e-3)


def test_new_key_share_of_a_synthetic_key_sequence() -> None:
    """From the window store's running totals: 100 keys seen in the interval, 25 of them new."""
    monitor = _monitor()
    assert math.isnan(monitor.figures().new_key_share)
    monitor.observe_keys(seen_total=40, new_total=40)  # the first interval: every key new
    monitor.close_interval()
    assert monitor.figures().new_key_share == 1.0
    monitor.observe_keys(seen_total=90, new_total=50)
    monitor.observe_keys(seen_total=140, new_total=65)
    assert monitor.figures().new_key_share == 1.0  # the open interval is not reported yet
    monitor.close_interval()
    assert monitor.figures().new_key_share == pytest.approx(25 / 100)
    monitor.close_interval()  # nothing seen since: no share
    assert math.isnan(monitor.figures().new_key_share)


def test_the_window_store_counts_keys_seen_and_new_ones(tmp_path: object) -> None:
    from stream_detector.engine.types import EventBatch
    from stream_detector.engine.windows import WindowStore

    store = WindowStore(window=2, n_features=1, initial_capacity=4, max_keys=2, idle_ttl_s=1e9)

    def batch(keys: list[str], t0: float) -> EventBatch:
        n = len(keys)
        return EventBatch(
            np.arange(n, dtype=np.int64), np.array(keys, dtype=object),
            t0 + np.arange(n, dtype=np.float64), np.zeros((n, 1), dtype=np.float32),
        )

    store.ingest(batch(["a", "a", "b"], 0.0), stride=1)
    assert (store.keys_seen_total, store.keys_new_total) == (2, 2)
    store.ingest(batch(["a", "b"], 10.0), stride=1)
    assert (store.keys_seen_total, store.keys_new_total) == (4, 2)
    # max_keys = 2: "c" evicts one; the evicted key comes back as new.
    store.ingest(batch(["c"], 20.0), stride=1)
    store.ingest(batch(["a", "b"], 30.0), stride=1)
    assert store.keys_new_total >= 4


def test_model_age_and_the_age_rule() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    assert model_age_days("2026-02-01T00:00:00+00:00", now) == pytest.approx(28.0)
    assert model_age_days("2026-02-01T00:00:00", now) == pytest.approx(28.0)  # naive: UTC
    assert model_age_days(None, now) is None and model_age_days("soon", now) is None
    monitor = _monitor(max_model_age_days=90)  # created 2026-01-01: 59 days old
    assert not monitor.figures(now).retrain_due
    later = monitor.figures(now + timedelta(days=40))
    assert later.retrain_due and "max_model_age_days" in later.reason
    monitor.created_at = None  # unknown age: never due
    assert not monitor.figures(now + timedelta(days=400)).retrain_due
    assert not _monitor(max_model_age_days=0).figures(now + timedelta(days=4000)).retrain_due


def test_drift_settings_are_validated() -> None:
    assert Settings().drift == DriftConfig()
    for bad in ({"half_life_windows": 0}, {"psi_bound": 0}, {"log_interval_s": -1},
                {"max_model_age_days": -1}, {"min_windows": 0}):
        with pytest.raises((ConfigError, ValueError)):
            DriftConfig(**bad)


# -- per-feature errors against the training means -------------------------------------------------


def test_errors_like_training_give_ratios_near_one() -> None:
    monitor = _feature_monitor()
    _feed_errors(monitor, _errors(60_000, seed=5))
    ratios = monitor.figures().feature_error_ratios
    assert list(ratios) == list(FEATURES)
    assert list(ratios.values()) == pytest.approx([1.0, 1.0, 1.0], rel=0.05)


def test_a_feature_whose_errors_tripled_is_named_and_the_others_stay_near_one() -> None:
    monitor = _feature_monitor()
    _feed_errors(monitor, _errors(60_000, seed=6, scale=(1.0, 3.0, 1.0)))
    figures = monitor.figures()
    ratios = figures.feature_error_ratios
    assert ratios["latency"] == pytest.approx(3.0, rel=0.05)
    assert (ratios["cpu"], ratios["errors"]) == pytest.approx((1.0, 1.0), rel=0.05)
    assert figures.top_feature == ("latency", ratios["latency"])
    fields = drift_fields(figures)
    assert fields["top_feature"] == "latency"
    assert fields["top_feature_ratio"] == pytest.approx(3.0, rel=0.05)


def test_feature_ratios_are_nan_where_unknown() -> None:
    few = _feature_monitor(min_windows=1000)
    _feed_errors(few, _errors(500, seed=7))
    assert all(math.isnan(r) for r in few.figures().feature_error_ratios.values())
    # An artefact written before training recorded the means: the features, with no ratio.
    unrecorded = _feature_monitor(means=None)
    _feed_errors(unrecorded, _errors(5000, seed=7))
    figures = unrecorded.figures()
    assert list(figures.feature_error_ratios) == list(FEATURES)
    assert all(math.isnan(r) for r in figures.feature_error_ratios.values())
    assert figures.top_feature is None
    assert drift_fields(figures)["top_feature"] is None
    assert drift_fields(figures)["top_feature_ratio"] is None
    # A training mean of 0 (a feature the model reconstructed perfectly) has no ratio either.
    zero = _feature_monitor(means=(0.2, 0.0, 0.05))
    _feed_errors(zero, _errors(5000, seed=7))
    ratios = zero.figures().feature_error_ratios
    assert math.isnan(ratios["latency"]) and ratios["cpu"] == pytest.approx(1.0, rel=0.1)


def test_feature_means_must_match_the_features() -> None:
    with pytest.raises(ValueError, match="2 feature error means for 3 features"):
        _feature_monitor(means=(0.2, 1.0))


@pytest.mark.parametrize("batch", [7, 700])
def test_figures_do_not_depend_on_the_batch_size(batch: int) -> None:
    """The same windows one at a time, in batches of 7 and all at once: the same figures, the
    decay applied per window whatever the batching."""
    errors = _errors(700, seed=8, scale=(1.0, 2.0, 0.5))
    one = _feature_monitor(half_life_windows=50, min_windows=10)
    other = _feature_monitor(half_life_windows=50, min_windows=10)
    _feed_errors(one, errors, batch=1)
    _feed_errors(other, errors, batch=batch)
    a, b = one.figures(), other.figures()
    for name in ("windows", "psi", "median_ratio", "over_threshold_share"):
        assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-9), name
    assert list(b.feature_error_ratios.values()) == pytest.approx(
        list(a.feature_error_ratios.values()), rel=1e-9
    )
    assert a.feature_error_ratios["latency"] == pytest.approx(2.0, rel=0.3)


def test_the_feature_ratio_gauge_per_model_version_and_feature() -> None:
    metrics = ServiceMetrics()
    metrics.start_model("v1", FEATURES)
    sample = metrics.registry.get_sample_value
    name = "sd_drift_feature_error_ratio"
    for feature in FEATURES:  # present from the start, NaN: not measured yet
        assert math.isnan(sample(name, {"model_version": "v1", "feature": feature}))
    monitor = _feature_monitor(min_windows=10)
    _feed_errors(monitor, _errors(5000, seed=9, scale=(1.0, 3.0, 1.0)))
    figures = monitor.figures()
    metrics.record_drift("v1", figures)
    latency = sample(name, {"model_version": "v1", "feature": "latency"})
    assert latency == figures.feature_error_ratios["latency"]
    metrics.model_swapped("v1", "v2")  # a swapped-in model has the same features
    assert math.isnan(sample(name, {"model_version": "v2", "feature": "cpu"}))
