"""KeyNormalizer against the textbook formulas over each key's full history."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.config import NormalizeConfig
from stream_detector.engine.normalize import KeyNormalizer

N_FEATURES = 2
GLOBAL_MEAN = np.array([5.0, -3.0], dtype=np.float32)
GLOBAL_STD = np.array([2.0, 0.5], dtype=np.float32)


def make(prior_weight: float = 8.0, horizon: int = 10**9, capacity: int = 8) -> KeyNormalizer:
    return KeyNormalizer(
        N_FEATURES,
        GLOBAL_MEAN,
        GLOBAL_STD,
        prior_weight=prior_weight,
        horizon=horizon,
        min_std=1e-3,
        capacity=capacity,
    )


def reference_stats(history: list[np.ndarray], prior_weight: float) -> tuple[np.ndarray, ...]:
    """Pool the key's whole history with prior_weight pseudo-events of the global statistics."""
    g_mean = GLOBAL_MEAN.astype(np.float64)
    g_var = GLOBAL_STD.astype(np.float64) ** 2
    if not history:
        return g_mean, np.sqrt(g_var)
    x = np.stack(history).astype(np.float64)
    n, w = len(x), prior_weight
    k_mean = x.mean(axis=0)
    k_m2 = ((x - k_mean) ** 2).sum(axis=0)
    mean = (w * g_mean + n * k_mean) / (w + n)
    var = (w * g_var + k_m2 + (g_mean - k_mean) ** 2 * w * n / (w + n)) / (w + n)
    return mean, np.maximum(np.sqrt(var), 1e-3)


operation = st.one_of(
    st.tuples(st.just("update"), st.integers(0, 2**31), st.integers(1, 30)),
    st.tuples(st.just("reset"), st.integers(0, 2**31), st.integers(1, 3)),
)


@settings(max_examples=100, deadline=None)
@given(
    prior_weight=st.sampled_from([0.0, 1.0, 64.0]),
    level=st.floats(-1e3, 1e3),
    scale=st.floats(1e-2, 1e2),
    operations=st.lists(operation, min_size=1, max_size=12),
)
def test_matches_full_history_reference(
    prior_weight: float, level: float, scale: float, operations: list[tuple[str, int, int]]
) -> None:
    n_slots = 5
    normalizer = make(prior_weight, capacity=n_slots)
    history: list[list[np.ndarray]] = [[] for _ in range(n_slots)]
    for kind, seed, size in operations:
        rng = np.random.default_rng(seed)
        slots = rng.integers(0, n_slots, size)
        if kind == "reset":
            normalizer.reset(slots)
            for slot in slots:
                history[slot] = []
            continue
        # Per-slot offsets so the between-means term of the pooled variance matters.
        values = (level + slots[:, None] * scale + rng.normal(0, scale, (size, N_FEATURES)))
        values = values.astype(np.float32)
        normalizer.update(slots, values)
        for slot, row in zip(slots, values):
            history[slot].append(row)
        all_slots = np.arange(n_slots)
        mean, std = normalizer.stats(all_slots)
        assert mean.dtype == np.float32 and std.dtype == np.float32
        for slot in all_slots:
            want_mean, want_std = reference_stats(history[slot], prior_weight)
            spread = max(scale, float(np.max(GLOBAL_STD)))
            np.testing.assert_allclose(mean[slot], want_mean, rtol=1e-5, atol=1e-5 * spread)
            np.testing.assert_allclose(std[slot], want_std, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prior_weight", [0.0, 64.0])
def test_new_and_reset_keys_get_exactly_the_global_stats(prior_weight: float) -> None:
    normalizer = make(prior_weight)
    mean, std = normalizer.stats(np.array([0, 3]))
    np.testing.assert_array_equal(mean, [GLOBAL_MEAN, GLOBAL_MEAN])
    np.testing.assert_array_equal(std, [GLOBAL_STD, GLOBAL_STD])
    normalizer.update(np.array([3, 3, 5]), np.array([[100, 100], [200, 0], [7, 7]], np.float32))
    normalizer.reset(np.array([3]))
    mean, std = normalizer.stats(np.array([3, 5]))
    np.testing.assert_array_equal(mean[0], GLOBAL_MEAN)
    np.testing.assert_array_equal(std[0], GLOBAL_STD)
    assert not np.array_equal(mean[1], GLOBAL_MEAN)  # slot 5 untouched by the reset


def test_horizon_keeps_adapting_after_a_level_shift() -> None:
    capped, uncapped = make(prior_weight=1.0, horizon=50), make(prior_weight=1.0)
    rng = np.random.default_rng(0)
    for level, batches in ((0.0, 200), (10.0, 20)):
        for _ in range(batches):
            values = (level + rng.normal(0, 0.1, (10, N_FEATURES))).astype(np.float32)
            capped.update(np.zeros(10, dtype=np.int64), values)
            uncapped.update(np.zeros(10, dtype=np.int64), values)
    slot = np.array([0])
    assert np.all(capped.stats(slot)[0] > 9.0)
    assert np.all(uncapped.stats(slot)[0] < 1.5)


def horizon_reference(values: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """One event at a time: a running mean/variance whose count stops at `horizon`, after which
    each event replaces 1/horizon of the past (textbook loop, no prior)."""
    n, mean, m2 = 0, np.zeros(values.shape[1]), np.zeros(values.shape[1])
    for x in values.astype(np.float64):
        kept = min(n, horizon - 1)
        m2 = m2 * (kept / n if n else 0.0)
        n_new = kept + 1
        delta = x - mean
        mean = mean + delta / n_new
        m2 = m2 + delta**2 * kept / n_new
        n = n_new
    return mean, np.sqrt(m2 / n)


def test_past_the_horizon_each_event_replaces_a_share_of_the_past() -> None:
    normalizer = make(prior_weight=0.0, horizon=20)
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [rng.normal(-50.0, 20.0, (100, N_FEATURES)), rng.normal(3.0, 2.0, (100, N_FEATURES))]
    ).astype(np.float32)
    normalizer.update(np.zeros(100, dtype=np.int64), values[:100])
    normalizer.update(np.zeros(100, dtype=np.int64), values[100:])
    mean, std = normalizer.stats(np.array([0]))
    want_mean, want_std = horizon_reference(values, 20)
    np.testing.assert_allclose(mean[0], want_mean, rtol=1e-5)
    np.testing.assert_allclose(std[0], want_std, rtol=1e-4)
    assert np.all(np.abs(mean[0] - 3.0) < 1.5)  # the old level is washed out


@settings(max_examples=60, deadline=None)
@given(
    horizon=st.sampled_from([1, 3, 50, 10**9]),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    seed=st.integers(0, 2**31),
)
def test_statistics_after_each_event_do_not_depend_on_batch_cuts(
    horizon: int, cuts: list[int], seed: int
) -> None:
    """The statistics recorded after every event, fed in random batches, equal those of a run
    one event at a time (the same float operations per key, so the same bits)."""
    rng = np.random.default_rng(seed)
    n = sum(cuts)
    slots = rng.integers(0, 4, n)
    values = rng.normal(rng.uniform(-1e3, 1e3), rng.uniform(0.1, 1e2), (n, N_FEATURES))
    values = values.astype(np.float32)
    single, batched = make(horizon=horizon), make(horizon=horizon)
    one_by_one = [single.update(slots[i : i + 1], values[i : i + 1], record=np.array([0]))
                  for i in range(n)]
    want_mean = np.concatenate([mean for mean, _ in one_by_one])
    want_std = np.concatenate([std for _, std in one_by_one])
    start, got_mean, got_std = 0, [], []
    for size in cuts:
        mean, std = batched.update(
            slots[start : start + size], values[start : start + size], record=np.arange(size)
        )
        got_mean.append(mean)
        got_std.append(std)
        start += size
    np.testing.assert_array_equal(np.concatenate(got_mean), want_mean)
    np.testing.assert_array_equal(np.concatenate(got_std), want_std)


def test_normalize_and_denormalize_are_inverse() -> None:
    normalizer = make()
    rng = np.random.default_rng(2)
    normalizer.update(rng.integers(0, 4, 50), rng.normal(10, 3, (50, N_FEATURES)))
    slots = np.array([0, 1, 3, 6])
    windows = rng.normal(10, 3, (4, 7, N_FEATURES)).astype(np.float32)
    mean, std = normalizer.stats(slots)
    z = normalizer.normalize(windows, mean, std)
    assert z.dtype == np.float32 and z.shape == windows.shape
    np.testing.assert_allclose(z, (windows - mean[:, None]) / std[:, None], rtol=1e-5)
    np.testing.assert_allclose(normalizer.denormalize(z, mean, std), windows, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        normalizer.denormalize(z[:, -1], mean, std), windows[:, -1], rtol=1e-4, atol=1e-4
    )


def test_std_floor_and_capacity_growth() -> None:
    normalizer = make(prior_weight=0.0, capacity=2)
    normalizer.update(np.array([1, 1, 1]), np.full((3, N_FEATURES), 4.0, np.float32))
    before = normalizer.stats(np.array([1]))
    np.testing.assert_array_equal(before[1], np.full((1, N_FEATURES), 1e-3, np.float32))  # floored
    normalizer.ensure_capacity(16)
    normalizer.ensure_capacity(4)  # never shrinks
    np.testing.assert_array_equal(normalizer.stats(np.array([1]))[0], before[0])
    np.testing.assert_array_equal(normalizer.stats(np.array([15]))[0], [GLOBAL_MEAN])


def _scaled(scale: float, n: int = 400, seed: int = 3) -> np.ndarray:
    """One key's series: level 50 and noise 2, both times `scale`."""
    rng = np.random.default_rng(seed)
    return (scale * (50.0 + rng.normal(0.0, 2.0, (n, N_FEATURES)))).astype(np.float64)


def test_keys_of_any_scale_are_scaled_by_their_own_statistics() -> None:
    """At the default settings, the same shape at scales 1e-3 .. 1e7 in one normaliser (whose
    training statistics are those of the pooled keys): each key's z-scores equal the others'
    (no pooled scale and no absolute std floor flattens the small keys)."""
    scales = 10.0 ** np.arange(-3, 8)
    series = [_scaled(s) for s in scales]
    pooled = np.concatenate(series)
    defaults = NormalizeConfig()
    normalizer = KeyNormalizer(
        N_FEATURES,
        pooled.mean(axis=0),
        pooled.std(axis=0),
        prior_weight=defaults.prior_weight,
        horizon=defaults.horizon,
        min_std=defaults.min_std,
        min_relative_std=defaults.min_relative_std,
        clip_sigma=defaults.clip_sigma,
        clip_after=defaults.warmup,
        capacity=len(scales),
    )
    slots = np.repeat(np.arange(len(scales)), 400).reshape(len(scales), 400).T.reshape(-1)
    values = np.stack(series, axis=1).reshape(-1, N_FEATURES)  # keys interleaved by event
    normalizer.update(slots, values)
    mean, std = normalizer.stats(np.arange(len(scales)))
    z = [(series[k][-1] - mean[k]) / std[k] for k in range(len(scales))]
    for k in range(1, len(scales)):
        np.testing.assert_allclose(z[k], z[0], rtol=1e-3, atol=1e-3)
    relative = std / scales[:, None]
    np.testing.assert_allclose(relative, np.broadcast_to(relative[0], relative.shape), rtol=1e-3)


def test_a_warm_key_does_not_absorb_a_long_anomaly() -> None:
    """After warm-up, a level shift of 20 std lasting 300 events moves a clipped key's mean by a
    fraction of what the plain running mean absorbs, and it stays far out in z-units."""
    def normalizer(clip_sigma: float) -> KeyNormalizer:
        return KeyNormalizer(
            N_FEATURES, GLOBAL_MEAN, GLOBAL_STD, prior_weight=0.0, horizon=10_000,
            min_std=1e-6, clip_sigma=clip_sigma, clip_after=64, capacity=1,
        )
    rng = np.random.default_rng(5)
    normal = rng.normal(0.0, 1.0, (400, N_FEATURES))
    shifted = rng.normal(20.0, 1.0, (300, N_FEATURES))
    slot = np.zeros(700, dtype=np.int64)
    stats = {}
    for clip in (0.0, 4.0):
        n = normalizer(clip)
        n.update(slot, np.concatenate([normal, shifted]))
        stats[clip] = n.stats(np.array([0]))
    plain_mean, plain_std = stats[0.0]
    clipped_mean, clipped_std = stats[4.0]
    assert np.all(plain_mean > 7.0)  # the plain mean has absorbed 300/700 of the shift
    assert np.all(clipped_mean < 0.5 * plain_mean)
    assert np.all((20.0 - clipped_mean) / clipped_std > 2 * (20.0 - plain_mean) / plain_std)


def test_clipping_waits_for_the_warm_up() -> None:
    """Events before clip_after are folded in whole: the first statistics are the key's own."""
    normalizer = KeyNormalizer(
        N_FEATURES, GLOBAL_MEAN, GLOBAL_STD, prior_weight=0.0, horizon=10_000,
        min_std=1e-6, clip_sigma=1.0, clip_after=10, capacity=1,
    )
    values = np.arange(10 * N_FEATURES, dtype=np.float64).reshape(10, N_FEATURES) ** 2
    normalizer.update(np.zeros(10, dtype=np.int64), values)
    mean, std = normalizer.stats(np.array([0]))
    np.testing.assert_allclose(mean[0], values.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std[0], values.std(axis=0), rtol=1e-5)


def test_normalised_windows_are_clipped_to_the_z_limit() -> None:
    """A key constant through its warm-up has only the std floor: a step off the constant
    reaches the model at +-z_limit, not at millions."""
    normalizer = KeyNormalizer(
        N_FEATURES, GLOBAL_MEAN, GLOBAL_STD, prior_weight=0.0, horizon=100, min_std=1e-6,
        z_limit=10.0, capacity=1,
    )
    normalizer.update(np.zeros(64, dtype=np.int64), np.zeros((64, N_FEATURES)))
    mean, std = normalizer.stats(np.array([0]))
    windows = np.array([[[0.0, 0.0], [5.0, -5.0], [1e-7, 0.0]]], dtype=np.float32)
    z = normalizer.normalize(windows, mean, std)
    np.testing.assert_allclose(z[0], [[0.0, 0.0], [10.0, -10.0], [0.1, 0.0]], rtol=1e-5)
