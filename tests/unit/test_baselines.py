"""Baselines: per-key history layout, rolling z-score, River HST, and the engine-cadence wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.config import Settings
from stream_detector.engine.stage import WindowStage
from stream_detector.engine.types import Decoded, EventBatch
from stream_detector.evaluation.baseline_detector import (
    BaselineDetector,
    WindowedScorer,
    calibrate,
)
from stream_detector.evaluation.baselines import (
    HalfSpaceTreesScorer,
    RollingZScore,
    river_available,
)
from stream_detector.evaluation.history import KeyedHistory, KeyIds


def _decoded(keys: list[str], values: np.ndarray, ts: np.ndarray) -> Decoded:
    n = len(keys)
    return Decoded(
        EventBatch(
            index=np.arange(n, dtype=np.int64),
            keys=np.array(keys, dtype=object),
            ts=np.asarray(ts, dtype=np.float64),
            values=np.asarray(values, dtype=np.float32).reshape(n, -1),
        )
    )


batches_of_keys = st.lists(st.lists(st.integers(0, 3), max_size=12), min_size=1, max_size=5)


@given(batches_of_keys, st.integers(1, 4))
@settings(max_examples=100, deadline=None)
def test_history_layout_matches_naive_per_key_lists(batches: list[list[int]], depth: int) -> None:
    history = KeyedHistory(depth, 1)
    seen: dict[int, list[float]] = {}
    counter = 0.0
    for keys in batches:
        ids = np.array(keys, dtype=np.int64)
        values = np.arange(counter, counter + len(keys))
        counter += len(keys)
        layout = history.extend(ids, values)
        for i, (key, value) in enumerate(zip(keys, values.tolist(), strict=True)):
            before = seen.setdefault(key, [])
            expected = ([np.nan] * depth + before)[-depth:]
            got = layout.trailing(np.array([i]), depth + 1, 0)[0]
            np.testing.assert_array_equal(got, np.array(expected + [value]))
            assert layout.ordinal[i] == len(before) + 1
            before.append(value)


def test_key_ids_are_stable_and_dense() -> None:
    ids = KeyIds()
    assert ids.ids(np.array(["b", "a", "b"], dtype=object)).tolist() == [1, 0, 1]
    assert ids.ids(np.array(["c", "a"], dtype=object)).tolist() == [2, 0]
    assert len(ids) == 3


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=30), st.integers(2, 6))
@settings(max_examples=100, deadline=None)
def test_zscore_matches_naive_reference(xs: list[float], window: int) -> None:
    scorer = RollingZScore(window, 1, min_std=1e-3)
    # Two batches, two keys interleaved: the result must not depend on batching or other keys.
    ids = np.arange(len(xs)) % 2
    values = np.array(xs)[:, None]
    half = len(xs) // 2
    got = np.concatenate(
        [scorer.score(ids[:half], values[:half]), scorer.score(ids[half:], values[half:])]
    )
    for i, x in enumerate(xs):
        previous = [xs[j] for j in range(i) if ids[j] == ids[i]][-(window - 1) :]
        if len(previous) < window - 1:
            assert np.isnan(got[i])
        else:
            expected = abs(x - np.mean(previous)) / max(np.std(previous), 1e-3)
            assert got[i] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_windowed_scorer_is_due_exactly_when_the_engine_scores() -> None:
    rng = np.random.default_rng(1)
    config = Settings(window={"size": 5, "stride": 3}, normalize={"warmup": 9})
    stage = WindowStage(config, np.zeros(1), np.ones(1), stride=3)
    windowed = WindowedScorer(RollingZScore(5, 1, 1e-3), window=5, stride=3, warmup=9)
    for _ in range(4):
        keys = rng.choice(["a", "b", "c"], size=17).tolist()
        decoded = _decoded(keys, rng.normal(size=17), np.arange(17.0))
        due = stage.ingest(decoded.batch).due
        got = windowed.windows(decoded)
        assert got.rows.tolist() == due.event_index.tolist()
        np.testing.assert_array_equal(got.start_ts, due.start_ts)


def test_window_score_is_max_over_the_window() -> None:
    windowed = WindowedScorer(RollingZScore(3, 1, 1.0), window=3, stride=1)
    # min_std 1 keeps the z-scores simple: |x - mean of previous two|.
    got = windowed.windows(_decoded(["k"] * 5, np.array([0.0, 0.0, 6.0, 0.0, 0.0]), np.arange(5.0)))
    assert got.rows.tolist() == [2, 3, 4]
    # z: [nan, nan, 6, 3, 3]; windows of 3 ending at 2, 3, 4.
    np.testing.assert_allclose(got.scores, [6.0, 6.0, 6.0])


def test_with_score_steps_the_window_score_is_max_over_its_newest_events() -> None:
    """As the model's score then judges only the window's newest events, so does a baseline's:
    a spike leaves its windows as soon as it is older than that."""
    windowed = WindowedScorer(RollingZScore(3, 1, 1.0), window=3, stride=1, scored=1)
    got = windowed.windows(_decoded(["k"] * 5, np.array([0.0, 0.0, 6.0, 0.0, 0.0]), np.arange(5.0)))
    # Per event: nan, nan, 6, then 1 and 1 (3 from the mean of the previous two, std 3).
    np.testing.assert_allclose(got.scores, [6.0, 1.0, 1.0])
    np.testing.assert_array_equal(got.start_ts, [0.0, 1.0, 2.0])  # still the whole window's


def _series(kind: str, n: int = 600, anomaly_at: int | None = 450) -> np.ndarray:
    """A spike on a sine for the z-score; for HST, whose single-feature scores saturate at the
    edges of the learnt range, a square wave that visits the never-seen middle level."""
    rng = np.random.default_rng(0)
    if kind == "zscore":
        series = np.sin(np.arange(n) / 10.0) + rng.normal(0, 0.05, n)
        if anomaly_at is not None:
            series[anomaly_at : anomaly_at + 3] += 8.0
        return series
    series = (np.arange(n) // 20 % 2).astype(float) + rng.normal(0, 0.02, n)
    if anomaly_at is not None:
        series[anomaly_at : anomaly_at + 6] = 0.5 + rng.normal(0, 0.02, 6)
    return series


def _alerts_for(detector: BaselineDetector, series: np.ndarray) -> list[tuple[str, float]]:
    out = []
    for start in range(0, len(series), 128):  # several batches, like a stream
        chunk = series[start : start + 128]
        ts = np.arange(start, start + len(chunk), dtype=np.float64)
        _, alerts = detector.process(_decoded(["k"] * len(chunk), chunk, ts))
        out.extend((a.kind, a.window_end) for a in alerts)
    return out


@pytest.mark.parametrize("kind", ["zscore", "hst"])
def test_baseline_alerts_on_an_obvious_anomaly_only(kind: str) -> None:
    if kind == "hst" and not river_available():
        pytest.skip("river not installed")
    config = Settings(
        window={"size": 16, "stride": 2},
        threshold={"warmup": 64, "sensitivity": 4.0, "alpha": 0.01},
        episodes={"min_consecutive": 2, "cooldown": 3},
        train={"calibration_quantile": 0.999},
    )

    def make() -> RollingZScore | HalfSpaceTreesScorer:
        if kind == "zscore":
            return RollingZScore(16, 1, 1e-3)
        return HalfSpaceTreesScorer(("value",), seed=0, n_trees=10, height=6, window_size=50)

    train = _series(kind, anomaly_at=None)
    global_threshold = calibrate(make, [_decoded(["k"] * 600, train, np.arange(600.0))], config)
    assert global_threshold > 0
    # As in an evaluation, the normal series runs first so the key's threshold is warm.
    stream = np.concatenate([train, _series(kind)])
    alerts = _alerts_for(BaselineDetector(make(), config, global_threshold), stream)
    opens = [end - 600 for kind_, end in alerts if kind_ == "open"]
    assert opens, "the anomaly was missed"
    assert all(450 <= end <= 450 + 16 for end in opens), opens


def test_hst_scores_far_values_higher() -> None:
    if not river_available():
        pytest.skip("river not installed")
    scorer = HalfSpaceTreesScorer(("value",), seed=0, n_trees=10, height=6, window_size=50)
    rng = np.random.default_rng(0)
    normal = rng.normal(0.5, 0.01, 400)[:, None]
    scorer.score(np.zeros(400, dtype=np.int64), normal)
    calm = scorer.score(np.zeros(1, dtype=np.int64), np.array([[0.5]]))
    # A new key must not share the first key's model.
    fresh = scorer.score(np.array([1]), np.array([[0.5]]))
    far = scorer.score(np.zeros(1, dtype=np.int64), np.array([[5.0]]))
    assert far[0] > calm[0]
    assert np.isnan(fresh[0])  # no score before a model's first reference window is full
    assert 1.0 <= calm[0] < far[0]  # inverse relative mass: 1 = as dense as it gets
