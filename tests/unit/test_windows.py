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
    """The documented rules, one event at a time, the slow obvious way with a list per key."""

    window: int
    max_keys: int
    idle_ttl_s: float
    history: dict[str, list[tuple[float, np.ndarray]]] = field(default_factory=dict)
    last_ts: dict[str, float] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    watermark: float = -np.inf
    seq: int = 0
    freed: list[str] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)  # rows of the last ingest's new keys

    def _free(self, key: str) -> None:
        del self.history[key], self.last_ts[key], self.last_seq[key]
        self.freed.append(key)

    def ingest(self, batch: EventBatch, stride: int, min_events: int = 0) -> list[tuple]:
        """Every event in turn; returns the windows (row, key, values, start, end), and keeps
        the rows where a key not tracked (never seen, or forgotten) arrived in `arrivals`."""
        windows = []
        self.arrivals = []
        for row, key in enumerate(batch.keys.tolist()):
            ts = float(batch.ts[row])
            self.watermark = max(self.watermark, ts)
            for other in list(self.history):
                if other != key and self.last_ts[other] < self.watermark - self.idle_ttl_s:
                    self._free(other)
            if key not in self.history:
                self.arrivals.append(row)
            if key not in self.history and len(self.history) >= self.max_keys:
                self._free(min(self.history, key=self.last_seq.__getitem__))
            events = self.history.setdefault(key, [])
            events.append((ts, batch.values[row]))
            c = len(events)
            if c >= max(self.window, min_events) and (c - self.window) % stride == 0:
                recent = events[-self.window :]
                values = np.stack([v for _, v in recent])
                windows.append((row, key, values, recent[0][0], recent[-1][0]))
            self.last_ts[key] = max(self.last_ts.get(key, -np.inf), ts)
            self.last_seq[key] = self.seq
            self.seq += 1
        return windows


def slots_of(store: WindowStore, *keys: str) -> list[int]:
    """The keys' slots in the store's registry, -1 for a key it does not track."""
    return store.registry.slots_of(np.array(keys, dtype=object)).tolist()


def ingest_all(store: WindowStore, batch: EventBatch, stride: int, min_events: int):
    """Hand the store the batch until it has taken all of it, as the stage does: returns the
    pieces' (due windows, report, offset of the piece in the batch)."""
    pieces, offset = [], 0
    while offset < len(batch):
        due, report = store.ingest(batch.rows(offset), stride, min_events)
        assert 1 <= report.taken <= len(batch) - offset
        pieces.append((due, report, offset))
        offset += report.taken
    return pieces


event = st.tuples(st.integers(0, 9), st.integers(0, 60))  # (key number, event time)


@settings(max_examples=200, deadline=None)
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
def test_matches_one_event_at_a_time_reference(
    on_device: bool,
    min_events: int,
    window: int,
    n_features: int,
    initial_capacity: int,
    max_keys: int,
    idle_ttl_s: float,
    batches: list[tuple[int, list[tuple[int, int]]]],
) -> None:
    """Whole batches (cut where evictions require it) give exactly the windows, forget exactly
    the keys, and report exactly the new keys' first events, of the rules applied one event at a
    time."""
    # on_device: the values in a torch tensor (on the CPU here), the device-resident code path.
    store = WindowStore(
        window, n_features, initial_capacity=initial_capacity, max_keys=max_keys,
        idle_ttl_s=idle_ttl_s, device=torch.device("cpu") if on_device else None,
    )
    naive = NaiveStore(window, max_keys, idle_ttl_s)
    serial = 0
    freed: list[str] = []
    for stride, events in batches:
        keys = [f"k{k}" for k, _ in events]
        ts = [float(t) for _, t in events]
        # Distinct values per event and feature, so any mix-up of events shows.
        values = serial + np.arange(len(events) * n_features, dtype=np.float32)
        serial += values.size
        values = values.reshape(len(events), n_features)
        batch = make_batch(keys, ts, values)

        pieces = ingest_all(store, batch, stride, min_events)
        expected = naive.ingest(batch, stride, min_events)

        rows = [row + offset for due, _, offset in pieces for row in due.event_index.tolist()]
        assert rows == [w[0] for w in expected]
        got_keys = [key for due, _, _ in pieces for key in due.keys.tolist()]
        assert got_keys == [w[1] for w in expected]
        got_values = [np.asarray(v) for due, _, _ in pieces for v in due.values]
        for due, _, _ in pieces:
            assert isinstance(due.values, torch.Tensor) == on_device
            assert tuple(due.values.shape)[1:] == (window, n_features)
        for got, want in zip(got_values, expected):
            np.testing.assert_array_equal(got, want[2])
        assert [t for due, _, _ in pieces for t in due.start_ts.tolist()] == [
            w[3] for w in expected
        ]
        assert [t for due, _, _ in pieces for t in due.end_ts.tolist()] == [w[4] for w in expected]
        arrivals = [row + offset for _, report, offset in pieces for row in report.new_key_rows]
        assert arrivals == naive.arrivals
        for due, report, offset in pieces:
            assert len(report.event_slots) == report.taken
            assert len(report.freed_slots) == len(report.freed_keys)
            assert report.evicted_lru + report.evicted_idle == len(report.freed_slots)
            freed += report.freed_keys.tolist()
        live = [s for s in slots_of(store, *(f"k{k}" for k in range(10))) if s >= 0]
        assert len(set(live)) == len(live)
        assert all(0 <= s < store.capacity for s in live)
        assert store.capacity <= max(max_keys, initial_capacity)
        silent, silent_keys = store.release_silent()
        assert len(silent) == len(silent_keys)
        freed += silent_keys.tolist()
        # After each batch the store tracks, and has forgotten, exactly the reference's keys.
        assert all(s >= 0 for s in slots_of(store, *naive.history))
        assert store.n_keys == len(naive.history)
        assert sorted(freed) == sorted(naive.freed)



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
    [slot_a] = slots_of(store, "a")
    due, report = store.ingest(make_batch(["b"], [3.0], [4.0]), stride=1)
    assert report.freed_slots.tolist() == [slot_a]
    assert report.evicted_lru == 1
    assert slots_of(store, "b", "a") == [slot_a, -1]
    assert len(due) == 0  # b has one event: nothing of a's ring leaks into its window
    due, _ = store.ingest(make_batch(["b"], [4.0], [5.0]), stride=1)
    np.testing.assert_array_equal(due.values[0, :, 0], [4, 5])


def test_new_keys_beyond_max_keys_are_taken_one_at_a_time() -> None:
    store = WindowStore(2, 1, max_keys=2)
    store.ingest(make_batch(["old"], [0.0], [0.0]), stride=1)
    keys = ["x", "y", "z", "x", "y", "z", "y", "z"]
    pieces = ingest_all(store, make_batch(keys, list(range(8)), np.arange(8)), 1, 0)
    # "x" fits, "y" evicts "old", "z" evicts "x" (least recently seen), the second "x" evicts
    # "y" and so on: each new key that needs an eviction is its own piece; the last two events
    # are of tracked keys and go together.
    assert [report.taken for _, report, _ in pieces] == [1, 1, 1, 1, 1, 1, 2]
    assert [key for _, report, _ in pieces for key in report.freed_keys.tolist()] == [
        "old", "x", "y", "z", "x"
    ]


def test_key_silent_between_its_own_events_starts_afresh_mid_batch() -> None:
    store = WindowStore(2, 1, idle_ttl_s=10.0)
    batch = make_batch(["a", "a", "b", "a", "a"], [0.0, 1.0, 50.0, 51.0, 52.0], np.arange(5))
    pieces = ingest_all(store, batch, 1, 0)
    # b's event at t=50 leaves a silent for 49 s > 10 s before its third event: a is forgotten
    # there, so its windows after that hold only its new events.
    assert [report.taken for _, report, _ in pieces] == [3, 2]
    assert pieces[1][1].freed_keys.tolist() == ["a"]
    windows = [np.asarray(due.values)[:, :, 0].tolist() for due, _, _ in pieces]
    assert windows == [[[0.0, 1.0]], [[3.0, 4.0]]]


def test_idle_keys_freed_unless_in_batch() -> None:
    store = WindowStore(2, 1, idle_ttl_s=10.0)
    store.ingest(make_batch(["a", "b"], [0.0, 0.0], [0.0, 0.0]), stride=1)
    _, report = store.ingest(make_batch(["a", "c"], [1.0, 50.0], [0.0, 0.0]), stride=1)
    assert report.evicted_idle == 1 and store.evicted_idle_total == 1
    assert slots_of(store, "b")[0] == -1 and slots_of(store, "a")[0] >= 0
    _, report = store.ingest(make_batch(["c"], [51.0], [0.0]), stride=1)
    assert slots_of(store, "a") == [-1]  # its newest event (t=1) is now past the TTL


def test_empty_batch_is_a_no_op() -> None:
    store = WindowStore(4, 2)
    due, report = store.ingest(EventBatch.empty(2), stride=1)
    assert len(due) == 0 and due.values.shape == (0, 4, 2)
    assert len(report.freed_slots) == 0


def test_rejects_bad_stride() -> None:
    with pytest.raises(ValueError):
        WindowStore(4, 1).ingest(make_batch(["a"], [0.0], [0.0]), stride=0)
