"""Per-key sliding windows held in one preallocated ring buffer.

Every key owns a slot (handed out by the store's `SlotRegistry`): a row of ``values[slot]``
(float32 [W, F]) and ``ts[slot]`` (float64 [W]) written round-robin. Per-key state is a handful
of numbers in flat arrays, so a key costs W*(4F + 8) bytes plus a few scalars and its dict
entry, and a whole batch is ingested with array operations: no Python object per event or per
window.

Eviction rules, defined one event at a time (the other per-slot stages reset every slot listed
in ``IngestReport.freed_slots``, see `WindowStage.sync_slots`):

* Idle: the watermark is the largest event time ingested so far. At each event, every other
  tracked key whose newest event is older than ``watermark - idle_ttl_s`` is freed. The key of
  the event itself is not silent and is kept, so a key whose clock lags the others is not reset
  while its events keep coming.
* LRU: a new key when ``max_keys`` keys are tracked frees the least recently seen key.
  "Recently seen" is a global sequence number of each key's latest event, so ties cannot occur.

A batch is taken whole wherever that gives the same result as its events one at a time; where it
would not (a key of the batch freed between two of its own events, or new keys that need LRU
evictions), `WindowStore.ingest` takes only the part before that point and the caller hands it
the rest, so results never depend on how the stream was cut into batches.

A freed slot starts empty (count 0) even when a new key reuses it in the same ingest.

The values may live on the model's device (`ring.DeviceRing`, the "device-resident" engine) while
every other array here stays in numpy: the store then uploads only each batch's new values and a
few index vectors, and the due windows come out as a tensor on that device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import structlog
import torch

from stream_detector.engine.decode import out_of_order
from stream_detector.engine.ring import RingValues, ring_values
from stream_detector.engine.slots import SlotArrays, SlotField, SlotRegistry, slot_fields
from stream_detector.engine.types import DueWindows, EventBatch, IngestReport

log = structlog.get_logger(__name__)


# numpy on the host ring, torch tensors on a device ring: the index math is the same.
_Index = TypeVar("_Index", np.ndarray, torch.Tensor)


def _window_index(
    count: _Index,
    before: _Index,
    ring_row: _Index,
    last: _Index,
    positions: _Index,
    window: int,
    n_ring: int,
) -> _Index:
    """Where element k of each due window is in (ring rows of the windows' slots, flat, followed
    by the batch's events grouped by key): an index [B, len(positions)].

    A window ending at a key's event number ``count`` (1-based) holds the key's events
    j = count - W + k (0-based): still in the ring at row ``ring_row * W + j % W`` when j is below
    ``before`` (the key's count before the batch), otherwise the batch event ``last + 1 - W + k``
    in the grouped order, ``last`` being the position there of the window's own last event.
    Operators only, so the same lines run on numpy arrays and on torch tensors on a device.
    """
    j = count[:, None] - window + positions
    in_ring = ring_row[:, None] * window + j % window
    in_batch = (last + (n_ring + 1 - window))[:, None] + positions
    return in_batch + (j < before[:, None]) * (in_ring - in_batch)


@dataclass(frozen=True)
class _KeyGroups:
    """A batch's events grouped by key: the one sort every ingest step reuses.

    keys:   object [U]  distinct keys: tracked ones in slot order, then new ones sorted
    slots:  int64 [U]   slot of each key before the ingest, -1 for a key not tracked yet
    inverse: int64 [N]  key number of each event
    order:  int64 [N]   event rows grouped by key, batch order kept inside a key
    size:   int64 [U]   events per key
    start:  int64 [U]   where each key's run begins in ``order``
    """

    keys: np.ndarray
    slots: np.ndarray
    inverse: np.ndarray
    order: np.ndarray
    size: np.ndarray
    start: np.ndarray

    @staticmethod
    def of(keys: np.ndarray, registry: SlotRegistry) -> _KeyGroups:
        """Group by slot rather than by key text: a dict lookup per event and one integer sort
        cost a fraction of sorting strings. Only keys not tracked yet are sorted as text, so new
        keys still take free slots in key order."""
        n = len(keys)
        capacity = registry.capacity
        codes = registry.slots_of(keys)
        new_rows = np.flatnonzero(codes < 0)
        new_keys = np.empty(0, dtype=object)
        if new_rows.size:
            new_keys, new_number = np.unique(keys[new_rows], return_inverse=True)
            codes[new_rows] = capacity + new_number.reshape(-1)
        order = np.argsort(codes, kind="stable")
        ordered = codes[order]
        first = np.empty(n, dtype=bool)
        first[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        start = np.flatnonzero(first)
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.cumsum(first) - 1
        distinct = ordered[start]
        tracked = distinct < capacity
        return _KeyGroups(
            keys=np.concatenate([registry.keys_of(distinct[tracked]), new_keys]),
            slots=np.where(tracked, distinct, -1),
            inverse=inverse,
            order=order,
            size=np.diff(start, append=n),
            start=start,
        )

    @property
    def last_row(self) -> np.ndarray:
        """Batch row of each key's latest event."""
        return self.order[self.start + self.size - 1]


class WindowStore(SlotArrays):
    """Ring buffer of the last W events of every tracked key; emits windows as they fall due.

    The write position of a key's j-th event (0-based, counted since the key got its slot) is
    ``j % W``, so the write head is ``count % W`` and needs no array of its own.

    The store owns the key -> slot `registry` and keeps its own per-slot arrays in step with it
    as slots are handed out and freed, since a slot freed and taken again within one ingest
    must start empty before the batch is written; the other stages follow after the ingest.

    ``device``: keep the values in a tensor there (None: in numpy on the host).
    """

    SLOT_FIELDS = (
        # A ring position past the key's count is never read, and the key writes it first.
        *slot_fields("values", "ts", reset=False),
        SlotField("count"),  # events since the key got the slot
        SlotField("last_ts", empty=-np.inf),  # newest event time of the key
        SlotField("last_seq", empty=-1),  # global sequence number of its latest event
    )

    def __init__(
        self,
        window: int,
        n_features: int,
        *,
        initial_capacity: int = 1024,
        max_keys: int = 100_000,
        idle_ttl_s: float = 3600.0,
        device: torch.device | None = None,
    ) -> None:
        if window < 1 or n_features < 1 or initial_capacity < 1 or max_keys < 1:
            raise ValueError("window, n_features, initial_capacity and max_keys must be >= 1")
        if not idle_ttl_s > 0:
            raise ValueError("idle_ttl_s must be > 0")
        self.window = window
        self.n_features = n_features
        self.max_keys = max_keys
        self.idle_ttl_s = float(idle_ttl_s)
        self.evicted_lru_total = 0
        self.evicted_idle_total = 0
        # Events earlier than an event of their key that came before them (accepted as they
        # arrive: a window is a key's last W events in arrival order); counted for operators.
        self.out_of_order_total = 0
        # Keys per ingest step (each counted once per step it appears in), and those of them
        # that held no slot before it: never seen, or evicted since. Running totals, so drift
        # monitoring can take a share of new keys over any interval without a set of its own.
        self.keys_seen_total = 0
        self.keys_new_total = 0
        self.registry = SlotRegistry(initial_capacity, max_keys)
        self._values: RingValues = ring_values(window, n_features, device)
        self._ts = np.empty((0, window), dtype=np.float64)
        self._count = np.empty(0, dtype=np.int64)
        self._last_ts = np.empty(0, dtype=np.float64)
        self._last_seq = np.empty(0, dtype=np.int64)
        self.ensure_capacity(initial_capacity)
        self._watermark = -np.inf
        self._seq = 0

    @property
    def ring(self) -> RingValues:
        """The values' storage: its `upload` moves host arrays to where the windows are."""
        return self._values

    @property
    def n_keys(self) -> int:
        return self.registry.n_keys

    @property
    def clock(self) -> tuple[float, int]:
        """(event-time watermark, event sequence number): the store's state beyond its keys."""
        return float(self._watermark), int(self._seq)

    def import_keys(
        self, keys: np.ndarray, state: dict[str, np.ndarray], clock: tuple[float, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Take over keys exported elsewhere; returns (rows of ``keys`` kept, their slots).

        A key already tracked is overwritten: the checkpoint reflects its partition's input up
        to the offset the consumer resumes from, so the live state would count events twice.
        When the keys do not all fit under max_keys, the most recently seen ones are kept.
        The clock moves forward only, so restored sequence numbers keep their LRU order.
        """
        rows = np.arange(len(keys))
        existing = self.registry.slots_of(keys)
        new = np.flatnonzero(existing < 0)
        room = self.max_keys - self.n_keys
        if len(new) > room:
            by_recency = np.argsort(state["last_seq"][new], kind="stable")
            dropped = new[by_recency[: len(new) - room]]
            log.warning("restored keys over max_keys dropped", dropped=len(dropped))
            rows = np.setdiff1d(rows, dropped)
        slots = existing[rows]
        self._assign(keys[rows], slots)
        self.import_slots(slots, {name: array[rows] for name, array in state.items()})
        watermark, seq = clock
        self._watermark = max(self._watermark, watermark)
        self._seq = max(self._seq, seq)
        return rows, slots

    def release_keys(self, keys: np.ndarray) -> np.ndarray:
        """Forget the given keys (those tracked); returns the slots freed, for the other stages."""
        _, slots = self.registry.tracked(keys)
        self._release(slots)
        return slots

    def ingest(
        self, batch: EventBatch, stride: int, min_events: int = 0
    ) -> tuple[DueWindows, IngestReport]:
        """Append the longest leading part of a batch that can be taken at once with the same
        result as one event at a time (``report.taken`` events, at least one); return every
        window that fell due in it, in arrival order.

        A key's window is due after its c-th event when c >= W, c >= ``min_events`` and
        (c - W) % stride == 0, and holds exactly the W events up to that one even if later events
        of the same batch wrap the ring past it: windows are gathered from (ring before the
        batch) ++ (batch) first, and the batch is written into the ring afterwards.
        ``min_events`` lets a caller skip windows it would discard (keys still warming up)
        before they are cut.

        The batch is cut short where an eviction would fall between two events of a key in it
        (see `_plan`), so the caller's per-key state can be reset at exactly that point.
        """
        if stride < 1:
            raise ValueError("stride must be >= 1")
        if len(batch) == 0:
            none = np.empty(0, dtype=np.int64)
            return self._no_windows(), IngestReport(
                none, np.empty(0, dtype=object), 0, 0, none, 0, none
            )
        groups = _KeyGroups.of(batch.keys, self.registry)
        taken, forgotten = self._plan(batch, groups)
        if taken < len(batch):
            batch = batch.rows(0, taken)
            groups = _KeyGroups.of(batch.keys, self.registry)
            _, forgotten = self._plan(batch, groups)
        last_row = groups.last_row
        newest_before = np.where(
            groups.slots >= 0, self._last_ts[np.maximum(groups.slots, 0)], -np.inf
        )
        self.out_of_order_total += int(
            np.count_nonzero(out_of_order(groups.inverse, batch.ts, newest_before))
        )
        slots = groups.slots.copy()  # room-making and slot assignment fill it in place
        self._watermark = max(self._watermark, float(batch.ts.max()))
        in_batch = np.zeros(self.capacity, dtype=bool)
        in_batch[slots[slots >= 0]] = True
        idle = np.flatnonzero(
            self.registry.occupied
            & ~in_batch
            & (self._last_ts < self._watermark - self.idle_ttl_s)
        )
        # Keys of the batch that went silent for idle_ttl_s before their first event here.
        idle = np.concatenate([idle, slots[forgotten]])
        slots[forgotten] = -1
        freed_keys = self._release(idle)
        lru_freed, lru_keys = self._make_room(slots, in_batch)
        self.keys_seen_total += len(slots)
        untracked = slots < 0
        self.keys_new_total += int(np.count_nonzero(untracked))
        new_key_rows = np.sort(groups.order[groups.start[untracked]])
        self._assign(groups.keys, slots)
        due = self._gather_and_write(batch, stride, min_events, groups, slots)
        self._last_seq[slots] = self._seq + last_row
        self._seq += len(batch)
        self.evicted_idle_total += len(idle)
        self.evicted_lru_total += len(lru_freed)
        if len(idle) or len(lru_freed):
            log.debug(
                "window keys evicted", idle=len(idle), lru=len(lru_freed), n_keys=self.n_keys
            )
        report = IngestReport(
            np.concatenate([idle, lru_freed]),
            np.concatenate([freed_keys, lru_keys]),
            len(lru_freed),
            len(idle),
            slots[groups.inverse],
            len(batch),
            new_key_rows,
        )
        return due, report

    def release_silent(self) -> tuple[np.ndarray, np.ndarray]:
        """Free the keys that the last ingest's own events left silent past idle_ttl_s (all but
        the key of its last event, as one event at a time would have by now); returns their
        (slots, keys). An ingest frees such keys only at its start, so without this a stream's
        final batch would keep them, and their episodes open, until the next one."""
        silent = np.flatnonzero(
            self.registry.occupied
            & (self._last_ts < self._watermark - self.idle_ttl_s)
            & (self._last_seq != self._seq - 1)
        )
        keys = self._release(silent)
        self.evicted_idle_total += len(silent)
        return silent, keys

    def _plan(self, batch: EventBatch, groups: _KeyGroups) -> tuple[int, np.ndarray]:
        """(taken, forgotten): how many leading events one ingest can take, and for each key of
        the batch whether it must be forgotten before its first event here.

        One event at a time, the watermark rises with every event and each other key silent for
        more than idle_ttl_s behind it is freed; a new key beyond max_keys frees the least
        recently seen one. Taken whole, a batch frees silent keys once, at its start. The two
        agree except where a key of the batch would be freed *between* two of its own events
        (its second event then starts afresh), or where new keys need LRU evictions: there
        the batch is cut, and a new key that needs an eviction is taken alone.
        """
        n = len(batch)
        tracked = groups.slots >= 0
        tracked_slots = groups.slots[tracked]
        watermark = max(self._watermark, float(batch.ts.max()))
        stale = watermark - self.idle_ttl_s
        forgotten = np.zeros(len(groups.slots), dtype=bool)
        taken = n
        if np.any(self._last_ts[tracked_slots] < stale) or float(batch.ts.min()) < stale:
            taken, forgotten = self._silences(batch, groups)
        new = ~tracked | forgotten
        room = self.max_keys - self.n_keys
        if np.count_nonzero(new) > room:
            # Keys not in the batch that the first event's watermark already frees make room.
            first_mark = max(self._watermark, float(batch.ts[0]))
            in_batch = np.zeros(self.capacity, dtype=bool)
            in_batch[tracked_slots] = True
            room += int(
                np.count_nonzero(
                    self.registry.occupied
                    & ~in_batch
                    & (self._last_ts < first_mark - self.idle_ttl_s)
                )
            )
            arrivals = np.sort(groups.order[groups.start[new]])
            if len(arrivals) > room:
                taken = min(taken, max(int(arrivals[room]), 1))
        return taken, forgotten

    def _silences(self, batch: EventBatch, groups: _KeyGroups) -> tuple[int, np.ndarray]:
        """Where, one event at a time, a key of the batch would be freed for silence before one
        of its events: (events before the first such event that is not its key's first here,
        whether each key is freed before its first event here).

        A key is freed before its event when some event came between it and the key's previous
        event, and the watermark before its event is more than idle_ttl_s past the key's
        newest event time so far.
        """
        n = len(batch)
        rows = groups.order  # batch rows grouped by key
        group = groups.inverse[rows]
        is_first = np.zeros(n, dtype=bool)
        is_first[groups.start] = True
        marks = np.maximum.accumulate(batch.ts)
        mark_before = np.empty(n, dtype=np.float64)
        mark_before[0] = self._watermark
        np.maximum(marks[:-1], self._watermark, out=mark_before[1:])
        # Newest own time before each event: a running max per key, as integer ranks offset by
        # the key's number so that one accumulate never carries across keys.
        ts = batch.ts[rows]
        by_time = np.argsort(ts, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[by_time] = np.arange(n)
        running = ts[by_time][np.maximum.accumulate(rank + group * n) - group * n]
        tracked = groups.slots >= 0
        first_newest = np.where(
            tracked, self._last_ts[np.maximum(groups.slots, 0)], np.inf
        )  # a new key has nothing to forget
        newest_before = np.empty(n, dtype=np.float64)
        newest_before[1:] = running[:-1]
        newest_before[groups.start] = first_newest
        previous = np.empty(n, dtype=np.int64)
        previous[1:] = rows[:-1]
        previous[groups.start] = np.where(
            tracked, self._last_seq[np.maximum(groups.slots, 0)] - self._seq, 0
        )
        gap = rows - previous > 1
        freed = gap & (newest_before < mark_before[rows] - self.idle_ttl_s)
        later = freed & ~is_first
        taken = int(rows[later].min()) if later.any() else n
        return taken, freed[groups.start]

    def _make_room(
        self, slots: np.ndarray, in_batch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Free the least recently seen keys not in the batch until the batch's new keys fit
        under max_keys; returns (slots freed, their keys). `_plan` makes sure that only a
        batch of one event ever needs this, so it matches one event at a time."""
        excess = self.n_keys + int(np.count_nonzero(slots < 0)) - self.max_keys
        if excess <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=object)
        others = np.flatnonzero(self.registry.occupied & ~in_batch)
        victims = others[np.argpartition(self._last_seq[others], excess - 1)[:excess]]
        return victims, self._release(victims)

    def _release(self, slots: np.ndarray) -> np.ndarray:
        """Free ``slots`` in the registry and empty the store's rows there at once (a new key may
        take them in this very ingest); returns the keys they held."""
        keys = self.registry.free(slots)
        self.reset(slots)
        return keys

    def _assign(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """`SlotRegistry.assign`, with the store's arrays grown to the registry's capacity."""
        self.registry.assign(keys, slots)
        self.ensure_capacity(self.registry.capacity)

    def _gather_and_write(
        self,
        batch: EventBatch,
        stride: int,
        min_events: int,
        groups: _KeyGroups,
        slots: np.ndarray,
    ) -> DueWindows:
        """Cut the due windows out of (old ring ++ batch), then write the batch into the ring.

        The batch's events, grouped by key, are uploaded once ("staged") and both the cut
        and the write index into them; with a device ring, so are the few index vectors.
        """
        w = self.window
        rows = groups.order  # batch row of each event, grouped by key
        group = groups.inverse[rows]
        rank = np.arange(len(rows)) - groups.start[group]  # position within its key in the batch
        slot = slots[group]
        before = self._count[slot]  # key's count before this batch
        count = before + rank + 1  # key's count including this event
        due = np.flatnonzero(
            (count >= max(w, min_events)) & ((count - w) % stride == 0)
        )  # positions in ``rows`` of the windows' last events
        due = due[np.argsort(rows[due], kind="stable")]
        ring_slots, ring_row = np.unique(slot[due], return_inverse=True)
        # Only a key's last W events of the batch survive in the ring; earlier ones would be
        # overwritten anyway, and skipping them keeps each (slot, position) written once.
        last = np.flatnonzero(rank >= groups.size[group] - w)
        ring = self._values
        staged, per_window, ring_slots_there, flat, last_there = ring.upload(
            batch.values[rows],
            np.stack([count[due], before[due], ring_row.reshape(-1), due]),
            ring_slots,
            slot[last] * w + (count[last] - 1) % w,
            last,
        )
        index = _window_index(*per_window, ring.positions, w, len(ring_slots) * w)
        windows = DueWindows(
            slots=slot[due],
            keys=groups.keys[group[due]],
            event_index=rows[due],
            values=ring.cut(ring_slots_there, staged, index),
            start_ts=self._start_ts(batch, rows, slot[due], count[due], before[due], due),
            end_ts=batch.ts[rows[due]],
        )
        ring.write(flat, staged, last_there)
        self._ts[slot[last], (count[last] - 1) % w] = batch.ts[rows[last]]
        self._count[slots] += groups.size
        newest = np.maximum.reduceat(batch.ts[groups.order], groups.start)
        self._last_ts[slots] = np.maximum(self._last_ts[slots], newest)
        return windows

    def _start_ts(
        self,
        batch: EventBatch,
        rows: np.ndarray,
        slot: np.ndarray,
        count: np.ndarray,
        before: np.ndarray,
        last: np.ndarray,
    ) -> np.ndarray:
        """Event time of each due window's first event: in the ring's times when it came before
        the batch, else the batch event W - 1 places before the window's last in ``rows``."""
        first = count - self.window
        from_batch = rows[np.maximum(last + 1 - self.window, 0)]
        return np.where(first < before, self._ts[slot, first % self.window], batch.ts[from_batch])

    def _no_windows(self) -> DueWindows:
        return DueWindows(
            slots=np.empty(0, dtype=np.int64),
            keys=np.empty(0, dtype=object),
            event_index=np.empty(0, dtype=np.int64),
            values=self._values.no_windows(),
            start_ts=np.empty(0, dtype=np.float64),
            end_ts=np.empty(0, dtype=np.float64),
        )
