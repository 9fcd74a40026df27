"""Near-flat windows: a window's spread judged against the smallest its key's windows had."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.engine.spread import IN_A_ROW, SpreadTracker, window_spread

W = 8


class NaiveSpread:
    """Per-window reference: one key and feature at a time, exactly as the module says."""

    def __init__(self, factor: float, warmup: int) -> None:
        self.factor, self.warmup = factor, warmup
        self.windows: dict[int, int] = {}
        self.state: dict[tuple[int, int], tuple[float, int, float]] = {}

    def step(self, slot: int, spreads: np.ndarray) -> list[bool]:
        warm = self.windows.get(slot, 0) >= self.warmup
        flags = []
        for feature, spread in enumerate(spreads.tolist()):
            least, run, stretch = self.state.get((slot, feature), (np.inf, 0, np.inf))
            if warm and spread < self.factor * least:
                run, stretch = run + 1, min(stretch, spread)
            else:
                least, run, stretch = min(least, spread), 0, np.inf
            flags.append(run >= IN_A_ROW)
            if run >= max(self.warmup, IN_A_ROW) and stretch > 0:  # the new normal
                least, run, stretch = min(least, stretch), 0, np.inf
            self.state[(slot, feature)] = (least, run, stretch)
        self.windows[slot] = self.windows.get(slot, 0) + 1
        return flags


def _windows(signal: np.ndarray, stride: int = 4) -> np.ndarray:
    """Sliding windows [B, W, 1] of a 1-D signal."""
    starts = range(0, len(signal) - W + 1, stride)
    return np.stack([signal[s : s + W] for s in starts])[:, :, None]


def _flags(tracker: SpreadTracker, windows: np.ndarray, slot: int = 0) -> np.ndarray:
    slots = np.full(len(windows), slot, dtype=np.int64)
    return tracker.update(slots, window_spread(windows))[:, 0]


def _swing_then_ripple(scale: float = 1.0, seed: int = 0, ripple: int = 200) -> np.ndarray:
    """A noisy oscillation for 400 readings, then `ripple` readings of a tremor a twentieth of
    its swing (every window of it has the same spread), then the oscillation again."""
    rng = np.random.default_rng(seed)
    t = np.arange(600)
    signal = 10 + np.sin(t / 3.0) + 0.02 * rng.normal(size=600)
    signal[400 : 400 + ripple] = 10 + 0.05 * (-1.0) ** t[400 : 400 + ripple]
    return scale * signal


FIRST_LOW = 400 // 4  # the first window wholly in the tremor (windows start every 4 readings)


def test_a_signal_that_loses_its_swing_is_near_flat_from_its_second_low_window() -> None:
    windows = _windows(_swing_then_ripple(ripple=48))
    flags = _flags(SpreadTracker(1, factor=0.5, warmup=16), windows)
    assert not flags[: FIRST_LOW + 1].any()
    assert flags[FIRST_LOW + 1 : FIRST_LOW + 11].all()  # the tremor's windows: not learnt
    assert not flags[FIRST_LOW + 11 :].any()


def test_a_collapse_that_lasts_a_warm_up_is_the_new_normal() -> None:
    """A metric quiet by night: found on its first quiet stretch for as long as the key took
    to warm up, then learnt, and its next quiet stretch is no news."""
    first_night = _swing_then_ripple(ripple=200)
    second_night = _swing_then_ripple(seed=1, ripple=200)
    windows = _windows(np.concatenate([first_night, second_night]))
    flags = _flags(SpreadTracker(1, factor=0.5, warmup=16), windows)
    assert flags[FIRST_LOW + 1 : FIRST_LOW + 16].all()
    assert not flags[FIRST_LOW + 16 :].any()


def test_not_judged_while_the_key_warms_up() -> None:
    windows = _windows(_swing_then_ripple())[90:]  # the key is first seen just before it
    assert not _flags(SpreadTracker(1, factor=0.5, warmup=16), windows)[:16].any()


def test_a_key_with_a_flat_window_in_its_warm_up_is_never_near_flat() -> None:
    signal = _swing_then_ripple()
    signal[20:40] = 10.0  # a constant stretch while the key warms up: its smallest spread is 0
    assert not _flags(SpreadTracker(1, factor=0.5, warmup=16), _windows(signal)).any()


def test_the_same_shape_is_judged_the_same_at_any_scale() -> None:
    flags = [
        _flags(SpreadTracker(1, factor=0.5, warmup=16), _windows(_swing_then_ripple(scale)))
        for scale in (1e-3, 1.0, 1e7)
    ]
    assert flags[0].any()
    np.testing.assert_array_equal(flags[0], flags[1])
    np.testing.assert_array_equal(flags[0], flags[2])


def test_keys_and_features_are_judged_apart() -> None:
    collapsing = _windows(_swing_then_ripple())
    steady = _windows(_swing_then_ripple(seed=1)[:400].repeat(2)[:600])
    windows = np.concatenate([collapsing, steady], axis=2)  # feature 0 collapses, 1 does not
    tracker = SpreadTracker(2, factor=0.5, warmup=16)
    n = len(windows)
    interleaved = np.empty((2 * n, W, 2))
    interleaved[0::2], interleaved[1::2] = windows, windows[:, :, ::-1]  # key 1: swapped
    slots = np.tile(np.array([0, 1], dtype=np.int64), n)
    flags = tracker.update(slots, window_spread(interleaved))
    assert flags[0::2, 0].any() and not flags[0::2, 1].any()
    assert flags[1::2, 1].any() and not flags[1::2, 0].any()


def test_an_exact_flat_stretch_is_never_learnt_as_the_new_normal() -> None:
    """Stuck at one value for longer than a warm-up: learning a spread of 0 would end the rule
    for the key, so a later collapse of its swing is still found."""
    signal = _swing_then_ripple(ripple=48)
    stuck = np.full(400, 10.0)  # 100 windows of spread 0, past the 16 of a warm-up
    windows = _windows(np.concatenate([signal[:400], stuck, signal]))
    flags = _flags(SpreadTracker(1, factor=0.5, warmup=16), windows)
    later = len(_windows(np.concatenate([signal[:400], stuck]))) + FIRST_LOW
    assert flags[later - 2 : later + 11].any()


def test_the_spread_keeps_its_precision_far_from_zero() -> None:
    """A spread of 1e-5 of a level of 1e7, in float32: each window is shifted by its last value
    first, or the float32 mean's rounding alone would be a visible part of the spread."""
    rng = np.random.default_rng(3)
    windows = (1e7 * (1 + 1e-5 * rng.normal(size=(500, W, 2)))).astype(np.float32)
    exact = windows.astype(np.float64).std(axis=1)
    np.testing.assert_allclose(window_spread(windows), exact, rtol=1e-6)


def test_a_device_tensor_gives_the_spread_numpy_does() -> None:
    windows = _windows(_swing_then_ripple()).astype(np.float32)
    host = window_spread(windows)
    np.testing.assert_allclose(window_spread(torch.from_numpy(windows)), host, rtol=1e-6)
    np.testing.assert_allclose(host, windows.astype(np.float64).std(axis=1), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    spreads=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.0, 5.0])),
        min_size=1,
        max_size=120,
    ),
    cuts=st.lists(st.integers(0, 120), max_size=8),
    warmup=st.sampled_from([1, 3]),
)
def test_vectorised_equals_naive_reference_for_any_batching(
    spreads: list[tuple[int, float]], cuts: list[int], warmup: int
) -> None:
    slots = np.array([slot for slot, _ in spreads], dtype=np.int64)
    values = np.array([[value, 2.0 - value / 3] for _, value in spreads])
    naive = NaiveSpread(0.5, warmup=warmup)
    want = np.array([naive.step(int(s), v) for s, v in zip(slots, values, strict=True)])
    tracker = SpreadTracker(2, factor=0.5, warmup=warmup, capacity=4)
    bounds = sorted({0, len(slots), *(c % (len(slots) + 1) for c in cuts)})
    got = np.concatenate(
        [tracker.update(slots[a:b], values[a:b]) for a, b in zip(bounds, bounds[1:])]
    )
    np.testing.assert_array_equal(got, want)


def test_a_reset_slot_starts_afresh() -> None:
    windows = _windows(_swing_then_ripple())
    kept, reset = SpreadTracker(1, factor=0.5, warmup=16), SpreadTracker(1, factor=0.5, warmup=16)
    for tracker in (kept, reset):
        assert not _flags(tracker, windows[:FIRST_LOW]).any()
    reset.reset(np.array([0]))
    assert _flags(kept, windows[FIRST_LOW:]).any()
    assert not _flags(reset, windows[FIRST_LOW:]).any(), "a new key there warms up on the ripple"
