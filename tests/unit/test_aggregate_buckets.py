"""Event-time bucketing against a naive, one-event-at-a-time reference of the documented rules.

The reference walks the stream event by event with Python dicts and no batching at all; the
aggregator is fed the same stream cut into random batches. Equal output for every cut is both the
correctness check and the proof that batching does not change what a key emits.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.aggregate.buckets import BucketAggregator, TimedEvents
from stream_detector.aggregate.features import FeaturePlan
from stream_detector.aggregate.sketch import estimate, hash_values
from stream_detector.aggregate.streams import StreamAggregators
from stream_detector.config import AggregateConfig, AggregateFeature

T0 = 1_700_000_000.0
PRECISION = 4
FEATURES = (
    AggregateFeature(name="flows", agg="count"),
    AggregateFeature(name="bytes", agg="sum", field="bytes"),
    AggregateFeature(name="mean_bytes", agg="mean", field="bytes"),
    AggregateFeature(name="min_bytes", agg="min", field="bytes"),
    AggregateFeature(name="max_bytes", agg="max", field="bytes"),
    AggregateFeature(name="ports", agg="distinct", field="port"),
)


@dataclass(frozen=True)
class Event:
    key: str
    ts: float
    bytes: int
    port: int | None


def _plan() -> FeaturePlan:
    return FeaturePlan.of(AggregateConfig(features=FEATURES, distinct_precision=PRECISION))


def _timed(events: list[Event]) -> TimedEvents:
    hashes, present = hash_values([e.port for e in events])
    return TimedEvents(
        index=np.arange(len(events), dtype=np.int64),
        keys=np.array([e.key for e in events], dtype=object),
        ts=np.array([e.ts for e in events], dtype=np.float64),
        numbers=np.array([[e.bytes] for e in events], dtype=np.float64).reshape(-1, 1),
        hashes=hashes.reshape(-1, 1),
        present=present.reshape(-1, 1),
    )


def _run(
    events: list[Event], cuts: list[int], width: float, lateness: float, idle: float
) -> tuple[list[tuple], list[int], BucketAggregator]:
    """Aggregator output as (key, end_ts, closing position in the stream, values) rows."""
    aggregator = BucketAggregator(_plan(), width, lateness, idle)
    rows: list[tuple] = []
    late: list[int] = []
    bounds = [0, *sorted(set(cuts)), len(events)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        step = aggregator.add(_timed(events[lo:hi]))
        late.extend((lo + np.flatnonzero(step.late)).tolist())
        for key in set(step.keys.tolist()):
            ends = step.end_ts[step.keys == key]
            assert np.all(np.diff(ends) > 0), "a key's buckets come out in time order"
        rows.extend(
            (k, float(t), lo + int(i), tuple(v))
            for k, t, i, v in zip(step.keys, step.end_ts, step.index, step.values.tolist())
        )
    return rows, late, aggregator


def _naive_registers(ports: list[int | None]) -> np.ndarray:
    registers = np.zeros(1 << PRECISION, dtype=np.uint8)
    rest_bits = 64 - PRECISION
    for port in ports:
        if port is None:
            continue
        h = int(hash_values([port])[0][0])
        index, rest = h >> rest_bits, h & ((1 << rest_bits) - 1)
        registers[index] = max(registers[index], rest_bits - rest.bit_length() + 1)
    return registers


def _reference(
    events: list[Event], width: float, lateness: float, idle: float
) -> tuple[list[tuple], list[int], int]:
    """The rules of buckets.py, literally: (rows, late positions, keys still live at the end)."""
    idle_buckets = math.floor(idle / width + 1e-9)
    latest = -math.inf
    closed_at: list[int] = []  # closed-bucket boundary after each event
    late = []
    members: dict[tuple[str, int], list[Event]] = defaultdict(list)
    for position, event in enumerate(events):
        latest = max(latest, event.ts)
        closed_at.append(math.floor((latest - lateness) / width))
        bucket = math.floor(event.ts / width)
        if bucket < closed_at[-1]:
            late.append(position)
        else:
            members[(event.key, bucket)].append(event)
    closed = closed_at[-1] if closed_at else None
    rows = []
    live = 0
    for key in sorted({key for key, _ in members}):
        busy = sorted(b for k, b in members if k == key)
        if closed is None or busy[-1] >= closed or busy[-1] + idle_buckets >= closed:
            live += 1
        due = sorted(
            {b for d in busy for b in range(d, d + idle_buckets + 1) if closed is not None and b < closed}
        )
        for b in due:
            group = members.get((key, b), [])
            sizes = [e.bytes for e in group]
            values = (
                len(group),
                sum(sizes),
                sum(sizes) / len(group) if group else 0.0,
                min(sizes, default=0.0),
                max(sizes, default=0.0),
                float(estimate(_naive_registers([e.port for e in group]))),
            )
            closer = next(i for i, c in enumerate(closed_at) if c > b)
            rows.append((key, (b + 1) * width, closer, tuple(np.float32(values).tolist())))
    return rows, late, live


def _sorted(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=lambda row: (row[0], row[1]))


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Event], list[int]]:
    n = draw(st.integers(0, 60))
    events = []
    for i in range(n):
        # Mostly moving forward, with jitter big enough to reorder events and to make some late.
        jitter = draw(st.floats(-12.0, 6.0, allow_nan=False).map(lambda x: round(x, 2)))
        events.append(
            Event(
                key=draw(st.sampled_from("abcd")),
                ts=T0 + i * 0.7 + jitter,
                bytes=draw(st.integers(1, 1500)),
                port=draw(st.one_of(st.none(), st.integers(1, 40))),
            )
        )
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    return events, cuts


@settings(max_examples=150, deadline=None)
@given(
    stream=streams(),
    width=st.sampled_from([1.0, 2.5, 10.0]),
    lateness=st.sampled_from([0.0, 1.5, 4.0, 12.0]),
    idle=st.sampled_from([0.0, 3.0, 10.0, 25.0]),
)
def test_matches_reference_for_any_batching(
    stream: tuple[list[Event], list[int]], width: float, lateness: float, idle: float
) -> None:
    events, cuts = stream
    got, got_late, aggregator = _run(events, cuts, width, lateness, idle)
    want, want_late, live = _reference(events, width, lateness, idle)
    assert got_late == want_late
    assert aggregator.late_total == len(want_late)
    assert [row[:3] for row in _sorted(got)] == [row[:3] for row in _sorted(want)]
    for (*_, g), (*_, w) in zip(_sorted(got), _sorted(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    assert aggregator.n_keys == live


def test_out_of_order_events_within_lateness_land_in_their_bucket() -> None:
    events = [
        Event("h", T0 + 0.5, 10, 1),
        Event("h", T0 + 12.0, 20, 2),  # watermark T0 + 7: bucket [T0, T0 + 10) still open
        Event("h", T0 + 9.0, 30, 3),  # out of order, within lateness: joins the first bucket
        Event("h", T0 + 25.0, 40, 4),  # watermark T0 + 20 closes the first two buckets
        Event("h", T0 + 8.0, 50, 5),  # its bucket closed: late
    ]
    rows, late, _ = _run(events, [], 10.0, 5.0, 60.0)
    assert late == [4]
    assert [(end - T0, values[:2]) for _, end, _, values in rows] == [
        (10.0, (2.0, 40.0)),
        (20.0, (1.0, 20.0)),
    ]


def test_quiet_key_yields_empty_buckets_up_to_idle_timeout_then_is_evicted() -> None:
    aggregator = BucketAggregator(_plan(), 10.0, 0.0, 30.0)
    first = aggregator.add(_timed([Event("quiet", T0 + 1, 100, 80), Event("busy", T0 + 2, 5, 1)]))
    assert len(first.keys) == 0 and aggregator.n_keys == 2
    # Only "busy" speaks from now on; its clock closes "quiet"'s buckets.
    step = aggregator.add(_timed([Event("busy", T0 + 10.0 * i + 2, 5, 1) for i in range(1, 10)]))
    quiet = step.keys == "quiet"
    assert (step.end_ts[quiet] - T0).tolist() == [10.0, 20.0, 30.0, 40.0]
    assert step.values[quiet][:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert np.all(step.values[quiet][1:] == 0.0), "an empty bucket is all zeros"
    assert aggregator.n_keys == 1 and aggregator.evicted_total == 1
    # Back after eviction: a new key, no empty buckets for the gap.
    aggregator.add(_timed([Event("quiet", T0 + 101, 7, 80)]))
    step = aggregator.add(_timed([Event("busy", T0 + 125, 5, 1)]))
    assert (step.end_ts[step.keys == "quiet"] - T0).tolist() == [110.0, 120.0]


def test_batch_spanning_more_buckets_than_a_code_holds_is_refused_clearly() -> None:
    aggregator = BucketAggregator(_plan(), 0.001, 0.0, 0.0)
    with pytest.raises(ValueError, match="bucket_width_s"):
        aggregator.add(_timed([Event("a", 0.0, 1, 1), Event("b", 1e13, 1, 1)]))


@settings(max_examples=100, deadline=None)
@given(
    ahead=streams(),
    behind=streams(),
    lag=st.sampled_from([300.0, 5_000.0]),
    picks=st.lists(st.booleans(), min_size=120, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    lateness=st.sampled_from([0.0, 4.0]),
    idle=st.sampled_from([0.0, 25.0]),
)
def test_a_lagging_partition_keeps_its_own_watermark(
    ahead: tuple[list[Event], list[int]],
    behind: tuple[list[Event], list[int]],
    lag: float,
    picks: list[bool],
    cuts: list[int],
    lateness: float,
    idle: float,
) -> None:
    """Two partitions interleaved, one far behind the other: each partition's keys get exactly
    what that partition aggregated alone gives, and nothing of the lagging one is late because
    of the other's newer events."""
    width = 10.0
    fast = ahead[0]
    # Distinct keys per partition (keyed input), the slow one `lag` seconds in the past.
    slow = [Event(e.key.upper(), e.ts - lag, e.bytes, e.port) for e in behind[0]]
    merged: list[tuple[int, Event]] = []
    queues = [list(fast), list(slow)]
    for pick in picks + [True] * (len(fast) + len(slow)):
        queue = queues[int(pick)] or queues[1 - int(pick)]
        if queue:
            merged.append((1 if queue is queues[1] else 0, queue.pop(0)))
    stream_of = np.array([code for code, _ in merged], dtype=np.int64)
    events = [event for _, event in merged]

    aggregators = StreamAggregators(_plan(), width, lateness, idle)
    rows: list[tuple] = []
    late: list[int] = []
    bounds = [0, *sorted({c % (len(events) + 1) for c in cuts}), len(events)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        timed = _timed(events[lo:hi])
        step = aggregators.add(timed, stream_of[lo:hi] + 7)  # any int codes will do
        assert np.all(np.diff(step.index) >= 0), "closed buckets come back in arrival order"
        late.extend((lo + np.flatnonzero(step.late)).tolist())
        rows.extend(
            (k, float(t), tuple(v)) for k, t, v in zip(step.keys, step.end_ts, step.values.tolist())
        )

    want_rows: list[tuple] = []
    want_late: list[int] = []
    for code, alone in ((0, fast), (1, slow)):
        positions = np.flatnonzero(stream_of == code)
        got_rows, got_late, _ = _reference(alone, width, lateness, idle)
        want_rows.extend((k, t, v) for k, t, _, v in got_rows)
        want_late.extend(positions[got_late].tolist())
    assert sorted(late) == sorted(want_late)
    assert [row[:2] for row in _sorted(rows)] == [row[:2] for row in _sorted(want_rows)]
    for (*_, g), (*_, w) in zip(_sorted(rows), _sorted(want_rows), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    assert aggregators.late_total == len(want_late)
    assert len(aggregators.streams) == (len(fast) > 0) + (len(slow) > 0)


def test_a_backlog_on_one_partition_is_not_late_behind_the_other() -> None:
    """The case the per-partition watermark exists for: partition 1 replays an hour-old backlog,
    in order, while partition 0 is live. One shared watermark would drop the whole backlog."""
    live = [Event("live", T0 + 3600 + i, 10, 1) for i in range(40)]
    backlog = [Event("old", T0 + i, 10, 1) for i in range(40)]
    events = [e for pair in zip(live, backlog, strict=True) for e in pair]
    partition = np.tile(np.array([0, 1], dtype=np.int64), 40)

    shared = BucketAggregator(_plan(), 10.0, 2.0, 0.0).add(_timed(events))
    assert shared.late[partition == 1].sum() >= 38, "one watermark: the backlog is late"

    step = StreamAggregators(_plan(), 10.0, 2.0, 0.0).add(_timed(events), partition)
    assert not step.late.any()
    old = step.keys == "old"
    assert (step.end_ts[old] - T0).tolist() == [10.0, 20.0, 30.0]
    assert step.values[old][:, 0].tolist() == [10.0, 10.0, 10.0]
