"""Array-shaped records passed between engine stages.

The batch is the unit of work: every stage takes and returns whole arrays, so no per-event Python
object exists on the hot path. Only rejects and alerts, which are rare, are Python objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

# Every reason a record can be refused, as written into dead-letter headers and metrics labels.
REJECT_REASONS: Final = (
    "oversized",  # message larger than input.max_message_bytes
    "not_json",  # bytes that orjson cannot parse
    "not_object",  # valid JSON that is not an object (array, number, string, null)
    "missing_key",  # key field absent or null (or no Kafka key when key_field is null)
    "bad_key",  # key is not a string or integer
    "missing_value",  # a value field absent or null
    "non_numeric",  # a value field that is not a number (bools count as non-numeric)
    "non_finite",  # NaN or +/-inf
    "bad_timestamp",  # timestamp absent, of the wrong type or unparsable
    "absurd_timestamp",  # parsed, but before input.min_timestamp or too far in the future
    "late",  # behind the watermark (aggregate mode)
)


@dataclass(frozen=True, slots=True)
class Reject:
    """One refused input record; `index` is its position in the batch handed to decode."""

    index: int
    reason: str
    detail: str


@dataclass(frozen=True)
class EventBatch:
    """Accepted events, in input order.

    index:  int64 [N]    position of each event in the batch handed to decode
    keys:   object [N]   entity key as str
    ts:     float64 [N]  event time, epoch seconds
    values: float32 [N, F]
    """

    index: np.ndarray
    keys: np.ndarray
    ts: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def rows(self, start: int, stop: int | None = None) -> EventBatch:
        """Events ``start:stop`` (views, no copy): one piece of a batch the engine splits."""
        part = slice(start, stop)
        return EventBatch(self.index[part], self.keys[part], self.ts[part], self.values[part])

    @staticmethod
    def empty(n_features: int) -> EventBatch:
        return EventBatch(
            index=np.empty(0, dtype=np.int64),
            keys=np.empty(0, dtype=object),
            ts=np.empty(0, dtype=np.float64),
            values=np.empty((0, n_features), dtype=np.float32),
        )


@dataclass(frozen=True)
class Decoded:
    """What decode returns: the good events and a reject for every bad record."""

    batch: EventBatch
    rejects: list[Reject] = field(default_factory=list)
    # Optional 0/1 label per accepted event (evaluate only; None in the service).
    labels: np.ndarray | None = None
    # Records read, where the batch holds something else (aggregate mode: closed buckets).
    records: int | None = None
    # Records input.filter skipped: read, but neither events nor rejects (nor dead letters).
    filtered: int = 0


@dataclass(frozen=True)
class DueWindows:
    """Windows that became due for scoring in one ingest, in arrival order of their last event.

    slots:       int64 [B]       ring-buffer slot of the key
    keys:        object [B]      the key
    event_index: int64 [B]       row in the EventBatch of the event that completed the window
    values:      float32 [B, W, F]  raw values, oldest first: numpy, or a torch tensor on the
                                    model's device when the window ring is device-resident
    start_ts:    float64 [B]     event time of the window's first event
    end_ts:      float64 [B]     event time of the window's last event
    """

    slots: np.ndarray
    keys: np.ndarray
    event_index: np.ndarray
    values: np.ndarray | Tensor
    start_ts: np.ndarray
    end_ts: np.ndarray

    def __len__(self) -> int:
        return int(self.slots.shape[0])


@dataclass(frozen=True)
class IngestReport:
    """Slots the window store freed during one ingest; per-slot state elsewhere must reset them.

    An ingest may take only the first ``taken`` events of the batch it was given (see
    `WindowStore.ingest`); the caller hands it the rest next.
    """

    freed_slots: np.ndarray  # int64, slots whose key was evicted (now free or reused)
    freed_keys: np.ndarray  # object, the key each of those slots held
    evicted_lru: int  # keys dropped because max_keys was reached
    evicted_idle: int  # keys dropped because they were silent longer than idle_ttl_s
    # int64 [taken]: slot of each taken event's key after the ingest.
    event_slots: np.ndarray
    taken: int
    # int64, ascending: the row of the first taken event of each key that held no slot before
    # the ingest (never seen, or forgotten since), where a rule on new keys looks.
    new_key_rows: np.ndarray


@dataclass(frozen=True)
class ScoredWindows:
    """Due windows with their scores and threshold decisions, in arrival order.

    feature_errors: float32 [B, F]  mean squared reconstruction error per feature (normalised units)
    actual:         float32 [B, F]  raw value of the window's last event
    expected:       float32 [B, F]  reconstruction of the last event, in raw units
    flat:           bool [B, F]     features in a flat line at the window's last event
                                    (engine/flat.py) or near-flat over the window
                                    (engine/spread.py); such a window exceeds whatever its score
    """

    slots: np.ndarray
    keys: np.ndarray
    event_index: np.ndarray
    start_ts: np.ndarray
    end_ts: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray
    exceed: np.ndarray
    feature_errors: np.ndarray
    actual: np.ndarray
    expected: np.ndarray
    flat: np.ndarray

    def __len__(self) -> int:
        return int(self.slots.shape[0])

    def select(self, keep: np.ndarray) -> ScoredWindows:
        """The windows `keep` (a bool mask or indices) picks, every field alike."""
        return ScoredWindows(**{name: getattr(self, name)[keep] for name in _SCORED_FIELDS})


_SCORED_FIELDS: Final = tuple(ScoredWindows.__dataclass_fields__)


class RejectTally:
    """Why records were refused, per reason, with the first record's detail for each: what an
    error about input with no valid event says, so that a wrong mapping names itself."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._first: dict[str, str] = {}

    @classmethod
    def of(cls, parts: Iterable[Decoded]) -> RejectTally:
        """The tally of every reject in `parts`."""
        tally = cls()
        for part in parts:
            tally.add(part.rejects)
        return tally

    def add(self, rejects: Iterable[Reject]) -> None:
        """Count `rejects` in, keeping the first detail seen for each reason."""
        for reject in rejects:
            self._counts[reject.reason] += 1
            self._first.setdefault(reject.reason, reject.detail)

    def __str__(self) -> str:
        """E.g. "3 records refused: missing_key 3 (first: key field 'key' is missing or null)"."""
        if not self._counts:
            return "no records refused"
        reasons = self._counts.most_common()
        listed = ", ".join(f"{r} {n} (first: {self._first[r]})" for r, n in reasons)
        return f"{self._counts.total()} records refused: {listed}"
