"""Flat lines: runs of one repeated value judged against the key's own longest earlier run."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.engine.flat import FlatLineTracker

NEVER = 10**9  # a learn_after no run here reaches


class NaiveFlat:
    """Per-event reference: one key and feature at a time, exactly as the module says."""

    def __init__(self, factor: float, min_run: int, learn_after: int) -> None:
        self.factor, self.min_run, self.learn_after = factor, min_run, learn_after
        self.state: dict[tuple[int, int], tuple[float | None, int, int, bool, bool]] = {}

    def step(self, slot: int, feature: int, value: float) -> bool:
        last, run, longest, flagged, learnt = self.state.get(
            (slot, feature), (None, 0, 0, False, False)
        )
        flat_from = max(self.factor * longest, self.min_run)
        if last is not None and value == last:
            run += 1
            # Flat for learn_after readings: the new normal from here on.
            learnt = learnt or (flagged and run >= flat_from + self.learn_after)
        else:
            if not flagged or learnt:
                longest = max(longest, run)
            run, flagged, learnt = 1, False, False
            flat_from = max(self.factor * longest, self.min_run)
        flat = not learnt and longest > 0 and run >= flat_from
        self.state[(slot, feature)] = (value, run, longest, flagged or flat, learnt)
        return flat


def _flags(tracker: FlatLineTracker, slots: list[int], values: np.ndarray) -> np.ndarray:
    """Flags after every event of one call."""
    slots_array = np.asarray(slots, dtype=np.int64)
    return tracker.update(slots_array, values, np.arange(len(slots), dtype=np.int64))


def test_a_noisy_sensor_that_sticks_is_flat_after_one_window() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=200), np.full(50, 0.25)])[:, None]
    flags = _flags(
        FlatLineTracker(1, factor=2.0, min_run=32, learn_after=NEVER), [0] * 250, values
    )[:, 0]
    # Noise never repeats (longest run 1); the stuck value counts from its first reading
    # (the run is 1 there), so it is flat at its 32nd reading and from then on.
    assert not flags[:231].any()
    assert flags[231:].all()


def test_a_coarse_sensor_needs_twice_its_own_longest_run() -> None:
    # Runs of 30 equal readings are this key's normal; 59 is not yet flat, 60 is.
    normal = np.repeat(np.arange(10.0), 30)
    values = np.concatenate([normal, np.full(70, -1.0)])[:, None]
    flags = _flags(
        FlatLineTracker(1, factor=2.0, min_run=8, learn_after=NEVER), [0] * len(values), values
    )[:, 0]
    assert not flags[: 300 + 59].any()
    assert flags[300 + 59 :].all()


def test_a_key_constant_since_it_was_first_seen_is_never_flat() -> None:
    values = np.full((500, 1), 3.0)
    assert not _flags(
        FlatLineTracker(1, factor=2.0, min_run=8, learn_after=NEVER), [0] * 500, values
    ).any()


def test_a_run_found_flat_is_not_learnt_as_normal() -> None:
    rng = np.random.default_rng(1)
    stuck = np.full(40, 7.0)
    values = np.concatenate([rng.normal(size=50), stuck, rng.normal(size=50), stuck])[:, None]
    flags = _flags(
        FlatLineTracker(1, factor=2.0, min_run=16, learn_after=NEVER), [0] * len(values), values
    )[:, 0]
    # Both stuck stretches are flat from their 16th reading: the first one did not raise the
    # bar for the second to 80.
    assert flags[50 + 15 : 90].all() and flags[140 + 15 :].all()
    assert not flags[: 50 + 15].any() and not flags[90 : 140 + 15].any()


def test_features_and_keys_are_judged_apart() -> None:
    rng = np.random.default_rng(2)
    n = 120
    values = rng.normal(size=(2 * n, 2))
    values[0::2][60:, 1] = 5.0  # key 0, feature 1 sticks at its 61st reading
    slots = [0, 1] * n
    flags = _flags(FlatLineTracker(2, factor=2.0, min_run=10, learn_after=NEVER), slots, values)
    key0, key1 = flags[0::2], flags[1::2]
    assert not key1.any() and not key0[:, 0].any()
    assert key0[69:, 1].all() and not key0[:69, 1].any()


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=300
    ),
    cuts=st.lists(st.integers(1, 300), max_size=6),
    factor=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    min_run=st.integers(1, 6),
    learn_after=st.sampled_from([1, 3, NEVER]),
)
def test_vectorised_equals_naive_reference_for_any_batching(
    data: list[tuple[int, int, int]],
    cuts: list[int],
    factor: float,
    min_run: int,
    learn_after: int,
) -> None:
    """Few distinct values, so runs start and end often; any cut of the stream into calls
    gives the per-event reference's flags."""
    slots = np.array([slot for slot, _, _ in data], dtype=np.int64)
    values = np.array([[a, b] for _, a, b in data], dtype=np.float64)
    naive = NaiveFlat(factor, min_run, learn_after)
    expected = np.array(
        [[naive.step(int(s), f, float(v[f])) for f in range(2)] for s, v in zip(slots, values)]
    )
    tracker = FlatLineTracker(
        2, factor=factor, min_run=min_run, learn_after=learn_after, capacity=4
    )
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    got = np.concatenate(
        [_flags(tracker, slots[a:b].tolist(), values[a:b]) for a, b in zip(bounds, bounds[1:])]
    )
    assert np.array_equal(got, expected)


def test_reset_slot_starts_afresh() -> None:
    rng = np.random.default_rng(3)
    tracker = FlatLineTracker(1, factor=2.0, min_run=4, learn_after=NEVER, capacity=2)
    _flags(tracker, [0] * 20, rng.normal(size=(20, 1)))
    tracker.reset(np.array([0]))
    # After the reset the slot's new key has no completed run: constant is not flat.
    assert not _flags(tracker, [0] * 30, np.full((30, 1), 1.0)).any()


def test_a_run_flat_for_as_long_as_a_warm_up_is_the_new_normal() -> None:
    """A metric that reads exactly one value every night: its first night is flat from twice
    its longest daytime run for `learn_after` readings, then normal, and learnt when it ends,
    so the next night is no news."""
    rng = np.random.default_rng(4)
    day, night = rng.normal(size=300), np.full(500, 0.0)
    values = np.concatenate([day, night, day, night])[:, None]
    flags = _flags(
        FlatLineTracker(1, factor=2.0, min_run=8, learn_after=100), [0] * len(values), values
    )[:, 0]
    # Noise never repeats: the first night is flat from its 8th reading for 100 readings.
    assert not flags[: 300 + 7].any()
    assert flags[300 + 7 : 300 + 107].all()
    assert not flags[300 + 107 :].any()
