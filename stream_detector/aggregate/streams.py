"""One bucket aggregator per source stream (input partition), each with its own watermark.

A watermark is only meaningful within one ordered stream. Kafka orders a partition, not a topic:
when one partition lags (a restarted consumer catching up a backlog, a slow producer), its events
are old next to another partition's, and one shared watermark would judge them all late. So, as
Kafka Streams keeps "stream time" per partition, every source stream gets its own
BucketAggregator: its own watermark, open buckets and idle keys. A batch is split by stream with
one stable sort (nothing per event in Python), each share goes to its stream's aggregator, and the
buckets they close are merged back in arrival order.

A key is expected to arrive on one partition (keyed input: message key = entity key, the normal
case). A key that arrives on several is aggregated separately in each: every partition emits its
own buckets for the key, each counting only that partition's events, and the key's windows see
them interleaved. Nothing is lost, but the features of such a key are split, not summed.

Outside Kafka (files, replay, evaluate, training) everything is one stream, SINGLE_STREAM.

Stream codes are stable across processes and hosts (a checkpoint names its stream by code, and
another instance restores it): the topic's CRC-32 in the high bits, the partition in the low ones.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Final

import numpy as np

from stream_detector.aggregate.buckets import (
    AggregatorState,
    BucketAggregator,
    BucketStep,
    TimedEvents,
)
from stream_detector.aggregate.features import FeaturePlan

SINGLE_STREAM: Final = 0
_PARTITION_BITS: Final = 32


def partition_stream(topic: str, partition: int) -> int:
    """The stream code of one topic-partition."""
    return ((zlib.crc32(topic.encode()) & 0x7FFFFFFF) << _PARTITION_BITS) | int(partition)


class StreamAggregators:
    """The aggregators of every source stream seen, created on a stream's first event."""

    def __init__(
        self,
        plan: FeaturePlan,
        bucket_width_s: float,
        allowed_lateness_s: float,
        idle_timeout_s: float,
    ) -> None:
        self.plan = plan
        self.width = float(bucket_width_s)
        self.lateness = float(allowed_lateness_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self._streams: dict[int, BucketAggregator] = {}
        # Counts of streams dropped (partitions handed away), so the totals never go down.
        self._late_dropped = 0
        self._evicted_dropped = 0
        self._fresh()  # raises ValueError for unusable bucket settings now, not on the first event

    @property
    def n_keys(self) -> int:
        """Keys with open or idling buckets, over all streams (a key on two partitions counts
        twice)."""
        return sum(aggregator.n_keys for aggregator in self._streams.values())

    @property
    def late_total(self) -> int:
        return self._late_dropped + sum(a.late_total for a in self._streams.values())

    @property
    def evicted_total(self) -> int:
        return self._evicted_dropped + sum(a.evicted_total for a in self._streams.values())

    @property
    def streams(self) -> tuple[int, ...]:
        return tuple(self._streams)

    def add(self, events: TimedEvents, streams: np.ndarray | None = None) -> BucketStep:
        """Fold a batch in, each event into its stream's aggregator (`streams`: code per event,
        None for one stream); the closed buckets come back ordered by the event that closed
        them, so a key's buckets stay in time order as long as the key keeps to one stream."""
        if streams is None:
            return self._aggregator(SINGLE_STREAM).add(events)
        codes, group = np.unique(streams, return_inverse=True)
        if len(codes) == 0:
            return self._fresh().add(events)  # nothing to fold; no stream to create
        if len(codes) == 1:
            return self._aggregator(int(codes[0])).add(events)
        group = group.reshape(-1)
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        late = np.zeros(len(events), dtype=bool)
        watermark = np.empty(len(events))
        steps = []
        for code, rows in zip(codes.tolist(), np.split(order, bounds), strict=True):
            step = self._aggregator(code).add(events.take(rows))
            late[rows] = step.late
            watermark[rows] = step.watermark
            steps.append(step)
        index = np.concatenate([step.index for step in steps])
        merged = np.argsort(index, kind="stable")
        return BucketStep(
            index=index[merged],
            keys=np.concatenate([step.keys for step in steps])[merged],
            end_ts=np.concatenate([step.end_ts for step in steps])[merged],
            values=np.concatenate([step.values for step in steps])[merged],
            late=late,
            watermark=watermark,
        )

    def flush(self) -> BucketStep:
        """Close every stream's open buckets (the input has ended), ordered by end time."""
        steps = [aggregator.flush() for aggregator in self._streams.values()]
        if not steps:
            return self._fresh().flush()
        end_ts = np.concatenate([step.end_ts for step in steps])
        merged = np.argsort(end_ts, kind="stable")
        return BucketStep(
            index=np.concatenate([step.index for step in steps])[merged],
            keys=np.concatenate([step.keys for step in steps])[merged],
            end_ts=end_ts[merged],
            values=np.concatenate([step.values for step in steps])[merged],
            late=np.empty(0, dtype=bool),
            watermark=np.empty(0),
        )

    def export_state(self, stream: int) -> AggregatorState:
        """A copy of one stream's state (empty for a stream never seen)."""
        return self._streams.get(stream, self._fresh()).export_state()

    def check_state(self, state: AggregatorState) -> None:
        self._fresh().check_state(state)

    def import_state(self, stream: int, state: AggregatorState) -> None:
        """Replace one stream's state with `state` (a checkpoint is the truth for its stream:
        the consumer resumes at its offset). Raises ValueError, changing nothing, if it does not
        fit."""
        aggregator = self._fresh()
        aggregator.import_state(state)
        self.drop([stream])
        self._streams[stream] = aggregator

    def drop(self, streams: Iterable[int]) -> None:
        """Forget streams, e.g. partitions handed to another instance."""
        for stream in streams:
            gone = self._streams.pop(stream, None)
            if gone is not None:
                self._late_dropped += gone.late_total
                self._evicted_dropped += gone.evicted_total

    def _aggregator(self, stream: int) -> BucketAggregator:
        aggregator = self._streams.get(stream)
        if aggregator is None:
            aggregator = self._streams[stream] = self._fresh()
        return aggregator

    def _fresh(self) -> BucketAggregator:
        return BucketAggregator(self.plan, self.width, self.lateness, self.idle_timeout_s)
