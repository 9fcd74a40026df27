"""Per-key event-time buckets with a watermark, allowed lateness and idle eviction, vectorised.

Rules (w = bucket width, L = allowed lateness, bucket b covers event times [b*w, (b+1)*w)):

* Watermark: the latest event time seen so far minus L. Each event is judged against the
  watermark as it stood when that event arrived (a running maximum over the batch), so the
  outcome does not depend on where the stream is cut into batches.
* Closing: bucket b is closed once floor(watermark / w) > b. An event whose bucket is already
  closed is late: it is reported and aggregates nowhere. Any other event joins its bucket, in
  whatever order it arrives.
* Empty buckets and idling: a key emits every closed bucket b for which it has a non-empty
  bucket d with d <= b <= d + floor(idle_timeout / w). Quiet buckets after a busy one come out
  with counts 0, so silence reaches the model, for at most that many buckets; a key with
  nothing more to emit and no open bucket is then evicted, and comes back as a new key.
  What a key emits is therefore a function of the accepted events alone, never of batching.

State is a table of open (key, bucket) groups kept sorted by (bucket, slot), so closing is
taking a prefix and a batch is folded in with one searchsorted; nothing is per event in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Final

import numpy as np
import structlog

from stream_detector.aggregate.features import FeaturePlan
from stream_detector.aggregate.partials import Partials
from stream_detector.aggregate.sketch import hash_values, register_updates

log = structlog.get_logger(__name__)

# "No non-empty bucket yet": far enough below any bucket that adding the idle span stays below.
_NO_DATA: Final = np.iinfo(np.int64).min // 4
_NO_NEXT: Final = np.iinfo(np.int64).max // 4
# Group codes are (bucket - base) * capacity + slot in int64; stay clear of overflow.
_CODE_LIMIT: Final = 1 << 62


@dataclass(frozen=True)
class TimedEvents:
    """Accepted raw events of one batch, in arrival order.

    index:   int64 [N]       position of each event in the batch handed to decode
    keys:    object [N]      entity key
    ts:      float64 [N]     event time, epoch seconds
    numbers: float64 [N, Fn] the plan's numeric fields
    hashes:  uint64 [N, Fd]  the plan's distinct fields, hashed
    present: bool [N, Fd]    whether the event has a value for each distinct field
    """

    index: np.ndarray
    keys: np.ndarray
    ts: np.ndarray
    numbers: np.ndarray
    hashes: np.ndarray
    present: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def take(self, rows: np.ndarray) -> TimedEvents:
        """The events at `rows`, in that order (one source stream's share of a batch)."""
        return TimedEvents(
            index=self.index[rows],
            keys=self.keys[rows],
            ts=self.ts[rows],
            numbers=self.numbers[rows],
            hashes=self.hashes[rows],
            present=self.present[rows],
        )


@dataclass(frozen=True)
class AggregatorState:
    """Everything a BucketAggregator needs to resume, independent of the slots its keys had.

    keys:         object [K]  every live key (open buckets, or still idling)
    last_data:    int64 [K]   each key's latest non-empty bucket already emitted (or none yet)
    open_key:     int64 [G]   row in `keys` of each open (key, bucket) group
    open_bucket:  int64 [G]   bucket number of each open group
    open:         Partials [G] the open groups' partial aggregates (HyperLogLog registers included)
    max_ts:       latest event time seen (-inf before any event); the watermark derives from it
    closed_until: buckets below it have been emitted (None before any event)
    """

    keys: np.ndarray
    last_data: np.ndarray
    open_key: np.ndarray
    open_bucket: np.ndarray
    open: Partials
    max_ts: float
    closed_until: int | None

    def __len__(self) -> int:
        return int(self.keys.shape[0])


@dataclass(frozen=True)
class BucketStep:
    """What one batch caused.

    index:     int64 [B]     position in the batch of the event whose arrival closed the bucket
    keys:      object [B]
    end_ts:    float64 [B]   end of the bucket (exclusive), epoch seconds
    values:    float32 [B, F] the plan's features
    late:      bool [N]      events that arrived after their bucket had closed
    watermark: float64 [N]   the watermark each event was judged against
    Buckets come ordered by end time, then by a hash of the key: not by slot, which depends on
    the key's history, so that an aggregator restored from a checkpoint emits in the same order
    as the one that wrote it. A key's buckets are always in time order.
    """

    index: np.ndarray
    keys: np.ndarray
    end_ts: np.ndarray
    values: np.ndarray
    late: np.ndarray
    watermark: np.ndarray


class BucketAggregator:
    """Open buckets of every live key; `add` folds in a batch and returns the buckets it closed."""

    def __init__(
        self,
        plan: FeaturePlan,
        bucket_width_s: float,
        allowed_lateness_s: float,
        idle_timeout_s: float,
        initial_capacity: int = 1024,
    ) -> None:
        if not bucket_width_s > 0 or allowed_lateness_s < 0 or idle_timeout_s < 0:
            raise ValueError("bucket width must be > 0, lateness and idle timeout >= 0")
        self.plan = plan
        self.width = float(bucket_width_s)
        self.lateness = float(allowed_lateness_s)
        # The small epsilon makes 0.3 s / 0.1 s count as 3 buckets, as a person would expect.
        self.idle_buckets = math.floor(idle_timeout_s / bucket_width_s + 1e-9)
        self.late_total = 0
        self.evicted_total = 0
        self._max_ts = -np.inf
        self._closed_until: int | None = None  # buckets below this have been emitted
        self._open = plan.empty(0)
        self._open_bucket = np.empty(0, dtype=np.int64)
        self._open_slot = np.empty(0, dtype=np.int64)
        self._slot_by_key: dict[str, int] = {}
        self._key_of_slot = np.full(initial_capacity, None, dtype=object)
        self._last_data = np.full(initial_capacity, _NO_DATA, dtype=np.int64)
        self._key_hash = np.zeros(initial_capacity, dtype=np.uint64)  # output order, see BucketStep
        self._live = np.zeros(initial_capacity, dtype=bool)
        self._free = list(range(initial_capacity - 1, -1, -1))

    @property
    def n_keys(self) -> int:
        return len(self._slot_by_key)

    # -- state for checkpoints -------------------------------------------------------------------

    def export_state(self) -> AggregatorState:
        """A copy of the whole state (later batches cannot change it), keyed by key, not slot."""
        live = np.flatnonzero(self._live)
        row_of_slot = np.full(len(self._live), -1, dtype=np.int64)
        row_of_slot[live] = np.arange(len(live))
        return AggregatorState(
            keys=self._key_of_slot[live],
            last_data=self._last_data[live],
            open_key=row_of_slot[self._open_slot],
            open_bucket=self._open_bucket.copy(),
            open=self._open.take(np.arange(len(self._open_bucket))),
            max_ts=self._max_ts,
            closed_until=self._closed_until,
        )

    def check_state(self, state: AggregatorState) -> None:
        """Raise ValueError unless `state` fits this aggregator's features; checked before any
        import so a bad checkpoint changes nothing."""
        n, g = len(state), len(state.open_bucket)
        want = self.plan.empty(g)
        shapes = {
            "last_data": (state.last_data.shape, (n,)),
            "open_key": (state.open_key.shape, (g,)),
            **{
                name: (getattr(state.open, name).shape, getattr(want, name).shape)
                for name in ("count", "sums", "mins", "maxs", "registers")
            },
        }
        for name, (got, expected) in shapes.items():
            if got != expected:
                raise ValueError(f"aggregator state {name!r} is shaped {got}, expected {expected}")
        if g and (state.open_key.min() < 0 or state.open_key.max() >= n):
            raise ValueError("aggregator state: an open bucket names no key")
        if len(set(state.keys.tolist())) != n:
            raise ValueError("aggregator state lists a key twice")

    def import_state(self, state: AggregatorState) -> None:
        """Take over `state` in a fresh aggregator (one that has seen no events)."""
        if self._slot_by_key or self._closed_until is not None:
            raise RuntimeError("import_state needs a fresh aggregator")
        self.check_state(state)
        slots = self._slots_for(state.keys)
        self._last_data[slots] = state.last_data
        open_slot = slots[state.open_key]
        order = np.lexsort((open_slot, state.open_bucket))
        self._open = state.open.take(order)
        self._open_bucket = state.open_bucket[order]
        self._open_slot = open_slot[order]
        self._max_ts = float(state.max_ts)
        self._closed_until = state.closed_until

    def add(self, events: TimedEvents) -> BucketStep:
        n = len(events)
        if n == 0:
            return self._nothing()
        bucket = np.floor(events.ts / self.width).astype(np.int64)
        seen = np.maximum(np.maximum.accumulate(events.ts), self._max_ts)
        watermark = seen - self.lateness
        closed_before = np.floor(watermark / self.width).astype(np.int64)
        late = bucket < closed_before
        self._max_ts = float(seen[-1])
        closed_until = int(closed_before[-1])
        self.late_total += int(np.count_nonzero(late))

        accepted = np.flatnonzero(~late)
        if accepted.size:
            slots = self._slots_for(events.keys[accepted])
            self._fold(bucket[accepted], slots, events, accepted)
        out_bucket, out_slot, out_partials = self._close(closed_until)
        order = np.lexsort((self._key_hash[out_slot], out_bucket))
        closer = np.searchsorted(closed_before, out_bucket[order], side="right")
        step = self._step(out_bucket, out_slot, out_partials, order, events.index[closer])
        step = replace(step, late=late, watermark=watermark)
        self._evict(closed_until)
        return step

    def flush(self) -> BucketStep:
        """Close every open bucket, as if the watermark had passed them all: the input has
        ended (a file replayed to its last line). Quiet keys get their empty buckets up to the
        last of them, as a watermark moving there would give them. Each bucket's `index` is -1,
        closed by no event."""
        if len(self._open_bucket) == 0:
            return self._nothing()
        closed_until = int(self._open_bucket.max()) + 1
        out_bucket, out_slot, out_partials = self._close(closed_until)
        order = np.lexsort((self._key_hash[out_slot], out_bucket))
        step = self._step(out_bucket, out_slot, out_partials, order, np.full(len(order), -1))
        self._evict(closed_until)
        return step

    def _step(
        self,
        out_bucket: np.ndarray,
        out_slot: np.ndarray,
        out_partials: Partials,
        order: np.ndarray,
        index: np.ndarray,
    ) -> BucketStep:
        """The closed buckets, in `order`, as a step with no events of its own."""
        out_bucket, out_slot = out_bucket[order], out_slot[order]
        return BucketStep(
            index=np.asarray(index, dtype=np.int64),
            keys=self._key_of_slot[out_slot],
            end_ts=(out_bucket + 1) * self.width,
            values=self.plan.values(out_partials.take(order)),
            late=np.empty(0, dtype=bool),
            watermark=np.empty(0),
        )

    def _nothing(self) -> BucketStep:
        return BucketStep(
            index=np.empty(0, dtype=np.int64),
            keys=np.empty(0, dtype=object),
            end_ts=np.empty(0),
            values=np.empty((0, len(self.plan.names)), dtype=np.float32),
            late=np.empty(0, dtype=bool),
            watermark=np.empty(0),
        )

    # -- keys ------------------------------------------------------------------------------------

    def _slots_for(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, giving new keys a slot.

        Known keys are looked up with a C-level map over the dict, cheaper than sorting Python
        strings to find the distinct ones; only the (rare) new keys are made unique.
        """
        slots = np.fromiter(
            map(self._slot_by_key.get, keys, repeat(-1)), dtype=np.int64, count=len(keys)
        )
        unknown = np.flatnonzero(slots < 0)
        if unknown.size == 0:
            return slots
        new_keys, inverse = np.unique(keys[unknown], return_inverse=True)
        given = np.empty(len(new_keys), dtype=np.int64)
        for i, key in enumerate(new_keys.tolist()):
            if not self._free:
                self._grow()
            slot = self._free.pop()
            self._slot_by_key[key] = slot
            self._key_of_slot[slot] = key
            self._live[slot] = True
            self._last_data[slot] = _NO_DATA
            given[i] = slot
        self._key_hash[given] = hash_values(new_keys)[0]
        slots[unknown] = given[inverse.reshape(-1)]
        return slots

    def _grow(self) -> None:
        old = len(self._live)
        new = 2 * old
        self._key_of_slot = np.concatenate([self._key_of_slot, np.full(old, None, dtype=object)])
        self._last_data = np.concatenate([self._last_data, np.full(old, _NO_DATA, np.int64)])
        self._key_hash = np.concatenate([self._key_hash, np.zeros(old, dtype=np.uint64)])
        self._live = np.concatenate([self._live, np.zeros(old, dtype=bool)])
        self._free.extend(range(new - 1, old - 1, -1))

    def _evict(self, closed_until: int) -> None:
        """Free keys that have emitted everything they will and have no open bucket."""
        has_open = np.zeros(len(self._live), dtype=bool)
        has_open[self._open_slot] = True
        done = self._live & ~has_open & (self._last_data + self.idle_buckets < closed_until)
        gone = np.flatnonzero(done)
        if gone.size == 0:
            return
        for slot in gone.tolist():
            del self._slot_by_key[self._key_of_slot[slot]]
        self._key_of_slot[gone] = None
        self._live[gone] = False
        self._free.extend(gone[::-1].tolist())
        self.evicted_total += int(gone.size)
        log.debug("aggregate keys evicted", keys=int(gone.size), live=self.n_keys)

    # -- open buckets ----------------------------------------------------------------------------

    def _fold(
        self, bucket: np.ndarray, slots: np.ndarray, events: TimedEvents, rows: np.ndarray
    ) -> None:
        """Reduce the accepted events per (key, bucket) and merge them into the open table."""
        capacity = len(self._live)
        base = int(bucket.min())
        top = int(bucket.max())
        if len(self._open_bucket):
            base = min(base, int(self._open_bucket[0]))
            top = max(top, int(self._open_bucket[-1]))
        if (top - base + 1) * capacity >= _CODE_LIMIT:
            raise ValueError(
                f"event times in one batch span {top - base + 1} buckets over {capacity} key "
                "slots, beyond what a group code holds; raise aggregate.bucket_width_s or lower "
                "input.max_future_s"
            )
        codes = (bucket - base) * capacity + slots
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        group_codes = sorted_codes[starts]
        first_of_group = order[starts]
        sorted_rows = rows[order]
        index, rank = register_updates(events.hashes[sorted_rows], self.plan.precision)
        rank[~events.present[sorted_rows]] = 0
        reduced = Partials.of_sorted_events(
            starts, events.numbers[sorted_rows], index, rank, self.plan.n_registers
        )

        open_codes = (self._open_bucket - base) * capacity + self._open_slot
        position = np.searchsorted(open_codes, group_codes)
        found = position < len(open_codes)
        found[found] = open_codes[position[found]] == group_codes[found]
        self._open.merge_at(position[found], reduced.take(found))
        new = ~found
        at = position[new]
        self._open = self._open.insert(at, reduced.take(new))
        self._open_bucket = np.insert(self._open_bucket, at, bucket[first_of_group[new]])
        self._open_slot = np.insert(self._open_slot, at, slots[first_of_group[new]])

    def _close(self, closed_until: int) -> tuple[np.ndarray, np.ndarray, Partials]:
        """Remove the now-closed groups and lay out every bucket due: (bucket, slot, partials).

        Each due bucket belongs to a run that starts at a non-empty bucket (or, for a key still
        idling from earlier batches, at the first bucket not yet emitted) and lasts up to
        idle_buckets further, until the key's next run or the watermark, whichever comes first.
        """
        previous = closed_until if self._closed_until is None else self._closed_until
        self._closed_until = closed_until
        cut = int(np.searchsorted(self._open_bucket, closed_until))
        data_bucket, data_slot = self._open_bucket[:cut], self._open_slot[:cut]
        data = self._open.take(slice(0, cut))
        self._open = self._open.take(slice(cut, None))
        self._open_bucket, self._open_slot = self._open_bucket[cut:], self._open_slot[cut:]

        if previous < closed_until:
            idling = np.flatnonzero(self._live & (self._last_data + self.idle_buckets >= previous))
        else:
            idling = np.empty(0, dtype=np.int64)
        n_idle = len(idling)
        slot = np.concatenate([idling, data_slot])
        anchor = np.concatenate([self._last_data[idling], data_bucket])
        start = np.concatenate([np.full(n_idle, previous, dtype=np.int64), data_bucket])
        is_data = np.arange(len(slot)) >= n_idle
        # At equal start, an idling run sorts first; it then ends before the data run begins.
        order = np.lexsort((is_data, start, slot))
        slot, anchor, start, is_data = slot[order], anchor[order], start[order], is_data[order]

        next_start = np.full(len(slot), _NO_NEXT, dtype=np.int64)
        same_key = slot[1:] == slot[:-1]
        next_start[:-1][same_key] = start[1:][same_key]
        end = np.minimum(np.minimum(anchor + self.idle_buckets, next_start - 1), closed_until - 1)
        length = np.maximum(end - start + 1, 0)
        first = np.cumsum(length) - length
        run = np.repeat(np.arange(len(slot)), length)
        out_bucket = start[run] + (np.arange(len(run)) - first[run])
        out_slot = slot[run]
        out = self.plan.empty(len(run))
        out.merge_at(first[is_data], data.take(order[is_data] - n_idle))

        if cut:
            np.maximum.at(self._last_data, data_slot, data_bucket)
        return out_bucket, out_slot, out
