"""WindowStore against a naive per-key list reference, event by event."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.engine.types import EventBatch
from stream_detector.engine.windows import WindowStore


def make_batch(keys: list[str], ts: list[float], values: np.ndarray) -> EventBatch:
    """An EventBatch from lists; 1-D values mean one feature."""
    values = np.asarray(values, dtype=np.float32)
    return EventBatch(
        index=np.arange(len(keys), dtype=np.int64),
        keys=np.array(keys, dtype=object),
        ts=np.asarray(ts, dtype=np.float64),
        values=values[:, None] if values.ndim == 1 else values,
    )


@dataclass
class NaiveStore:
    """The documented rules, written the slow obvious way with a Python list per key."""

    window: int
    max_keys: int
    idle_ttl_s: float
    history: dict[str, list[tuple[float, np.ndarray]]] = field(default_factory=dict)
    last_ts: dict[str, float] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    watermark: float = -np.inf
    seq: int = 0

    def _free(self, key: str) -> None:
        del self.history[key], self.last_ts[key], self.last_seq[key]

    def ingest(
        self, batch: EventBatch, stride: int, min_events: int = 0
    ) -> tuple[list[tuple], list[str], int, int]:
        """Return (windows, freed keys, lru count, idle count)."""
        if len(batch) == 0:
            return [], [], 0, 0
        keys = batch.keys.tolist()
        last_pos = {key: row for row, key in enumerate(keys)}
        self.watermark = max(self.watermark, max(batch.ts))
        freed: list[str] = []
        idle = 0
        for key in list(self.history):
            if key not in last_pos and self.last_ts[key] < self.watermark - self.idle_ttl_s:
                self._free(key)
                freed.append(key)
                idle += 1
        lru = 0
        batch_keys = sorted(last_pos, key=last_pos.__getitem__)  # by latest event
        if len(batch_keys) > self.max_keys:
            dropped = set(batch_keys[: len(batch_keys) - self.max_keys])
            for key in list(self.history):
                if key not in last_pos or key in dropped:
                    self._free(key)
                    freed.append(key)
                    lru += 1 if key not in dropped else 0
            lru += len(dropped)
        else:
            dropped = set()
            new = sum(key not in self.history for key in batch_keys)
            by_age = sorted(
                (k for k in self.history if k not in last_pos), key=self.last_seq.__getitem__
            )
            for key in by_age[: max(0, len(self.history) + new - self.max_keys)]:
                self._free(key)
                freed.append(key)
                lru += 1
        windows = []
        for row, key in enumerate(keys):
            if key in dropped:
                continue
            events = self.history.setdefault(key, [])
            events.append((float(batch.ts[row]), batch.values[row]))
            c = len(events)
            if c >= max(self.window, min_events) and (c - self.window) % stride == 0:
                recent = events[-self.window :]
                values = np.stack([v for _, v in recent])
                windows.append((row, key, values, recent[0][0], recent[-1][0]))
            self.last_ts[key] = max(self.last_ts.get(key, -np.inf), float(batch.ts[row]))
            self.last_seq[key] = self.seq + row
        self.seq += len(keys)
        return windows, freed, lru, idle


event = st.tuples(st.integers(0, 9), st.integers(0, 60))  # (key number, event time)


@settings(max_examples=150, deadline=None)
@given(
    on_device=st.booleans(),
    min_events=st.sampled_from([0, 5, 9]),
    window=st.integers(2, 8),
    n_features=st.integers(1, 3),
    initial_capacity=st.integers(1, 4),
    max_keys=st.integers(1, 12),
    idle_ttl_s=st.sampled_from([3.0, 15.0, 1e9]),
    batches=st.lists(
        st.tuples(st.integers(1, 6), st.lists(event, min_size=0, max_size=40)),
        min_size=1,
        max_size=8,
    ),
)
def test_matches_naive_reference(
    on_device: bool,
    min_events: int,
    window: int,
    n_features: int,
    initial_capacity: int,
    max_keys: int,
    idle_ttl_s: float,
    batches: list[tuple[int, list[tuple[int, int]]]],
) -> None:
    # on_device: the values in a torch tensor (on the CPU here), the device-resident code path.
    store = WindowStore(
        window, n_features, initial_capacity=initial_capacity, max_keys=max_keys,
        idle_ttl_s=idle_ttl_s, device=torch.device("cpu") if on_device else None,
    )
    naive = NaiveStore(window, max_keys, idle_ttl_s)
    serial = 0
    for stride, events in batches:
        keys = [f"k{k}" for k, _ in events]
        ts = [float(t) for _, t in events]
        # Distinct values per event and feature, so any mix-up of events shows.
        values = serial + np.arange(len(events) * n_features, dtype=np.float32)
        serial += values.size
        values = values.reshape(len(events), n_features)
        batch = make_batch(keys, ts, values)
        slot_before = {key: store.slot_of(key) for key in naive.history}

        due, report = store.ingest(batch, stride, min_events)
        expected, freed_keys, lru, idle = naive.ingest(batch, stride, min_events)

        assert due.event_index.tolist() == [w[0] for w in expected]
        assert due.keys.tolist() == [w[1] for w in expected]
        assert isinstance(due.values, torch.Tensor) == on_device
        assert tuple(due.values.shape) == (len(expected), window, n_features)
        for got, want in zip(np.asarray(due.values), expected):
            np.testing.assert_array_equal(got, want[2])
        assert due.start_ts.tolist() == [w[3] for w in expected]
        assert due.end_ts.tolist() == [w[4] for w in expected]
        assert due.slots.tolist() == [store.slot_of(k) for k in due.keys]
        assert report.event_slots.tolist() == [
            -1 if store.slot_of(k) is None else store.slot_of(k) for k in keys
        ]
        assert (report.evicted_lru, report.evicted_idle) == (lru, idle)
        assert sorted(report.freed_slots.tolist()) == sorted(slot_before[k] for k in freed_keys)
        assert store.n_keys == len(naive.history)
        tracked = [store.slot_of(f"k{k}") for k in range(10)]
        assert [s is not None for s in tracked] == [f"k{k}" in naive.history for k in range(10)]
        live = [s for s in tracked if s is not None]
        assert len(set(live)) == len(live)
        assert all(0 <= s < store.capacity for s in live)
        assert store.capacity <= max(max_keys, initial_capacity)
    assert store.evicted_lru_total >= 0 and store.evicted_idle_total >= 0


def test_window_survives_wrap_within_one_batch() -> None:
    """A key with many more than W events in one batch gets every window intact."""
    store = WindowStore(3, 1)
    n = 20
    due, _ = store.ingest(make_batch(["a"] * n, list(range(n)), np.arange(n)), stride=1)
    assert due.event_index.tolist() == list(range(2, n))
    np.testing.assert_array_equal(due.values[:, :, 0], np.arange(2, n)[:, None] - [2, 1, 0])
    np.testing.assert_array_equal(due.start_ts, np.arange(n - 2))
    # The ring holds the batch's last W events: the next window continues seamlessly.
    due, _ = store.ingest(make_batch(["a"], [99.0], [99.0]), stride=1)
    np.testing.assert_array_equal(due.values[0, :, 0], [18, 19, 99])


def test_growth_doubles_up_to_max_keys() -> None:
    store = WindowStore(2, 1, initial_capacity=1, max_keys=6)
    capacities = []
    for k in range(8):
        store.ingest(make_batch([f"k{k}"], [float(k)], [0.0]), stride=1)
        capacities.append(store.capacity)
    assert capacities == [1, 2, 4, 4, 6, 6, 6, 6]
    assert store.n_keys == 6
    assert store.evicted_lru_total == 2


def test_freed_slot_reused_in_same_ingest_starts_empty() -> None:
    store = WindowStore(2, 1, initial_capacity=1, max_keys=1)
    store.ingest(make_batch(["a", "a", "a"], [0, 1, 2], [1, 2, 3]), stride=1)
    slot_a = store.slot_of("a")
    due, report = store.ingest(make_batch(["b"], [3.0], [4.0]), stride=1)
    assert report.freed_slots.tolist() == [slot_a]
    assert report.evicted_lru == 1
    assert store.slot_of("b") == slot_a and store.slot_of("a") is None
    assert len(due) == 0  # b has one event: nothing of a's ring leaks into its window
    due, _ = store.ingest(make_batch(["b"], [4.0], [5.0]), stride=1)
    np.testing.assert_array_equal(due.values[0, :, 0], [4, 5])


def test_batch_with_more_keys_than_max_keeps_latest() -> None:
    store = WindowStore(2, 1, max_keys=2)
    store.ingest(make_batch(["old"], [0.0], [0.0]), stride=1)
    keys = ["x", "y", "z", "x", "y", "z", "y", "z"]  # x's last event comes first
    due, report = store.ingest(make_batch(keys, list(range(8)), np.arange(8)), stride=1)
    assert store.slot_of("x") is None and store.slot_of("old") is None
    assert {store.slot_of("y"), store.slot_of("z")} == {0, 1}
    assert "x" not in due.keys.tolist()
    assert report.evicted_lru == 2  # "old" evicted, "x" dropped
    assert report.event_slots[[0, 3]].tolist() == [-1, -1]  # x's events are dropped
    assert report.freed_slots.tolist() == [0]


def test_idle_keys_freed_unless_in_batch() -> None:
    store = WindowStore(2, 1, idle_ttl_s=10.0)
    store.ingest(make_batch(["a", "b"], [0.0, 0.0], [0.0, 0.0]), stride=1)
    _, report = store.ingest(make_batch(["a", "c"], [1.0, 50.0], [0.0, 0.0]), stride=1)
    assert report.evicted_idle == 1 and store.evicted_idle_total == 1
    assert store.slot_of("b") is None and store.slot_of("a") is not None
    _, report = store.ingest(make_batch(["c"], [51.0], [0.0]), stride=1)
    assert store.slot_of("a") is None  # its newest event (t=1) is now past the TTL


def test_empty_batch_is_a_no_op() -> None:
    store = WindowStore(4, 2)
    due, report = store.ingest(EventBatch.empty(2), stride=1)
    assert len(due) == 0 and due.values.shape == (0, 4, 2)
    assert len(report.freed_slots) == 0


def test_rejects_bad_stride() -> None:
    with pytest.raises(ValueError):
        WindowStore(4, 1).ingest(make_batch(["a"], [0.0], [0.0]), stride=0)
