"""Raw event messages (flows, requests, log lines) -> the per-key buckets they close, as events.

The engine's Decoder does all record validation (parse, key, event time, numeric fields), so a
raw event is refused for the same reasons, with the same details, as in events mode. This module
adds what aggregation needs on top: the distinct-count fields, which may be text (addresses) and
may be absent (an ICMP flow has no port) without refusing the event, and the bucketing itself.

The result is a `Decoded` whose batch holds closed buckets (key, bucket end time, the configured
features) instead of messages, so everything after decode (windows, model, thresholds,
episodes) runs unchanged. A bucket's `index` is the position of the message whose arrival
closed it; late events become rejects with reason `late` (or are only counted, with
late_policy = "drop").
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import structlog

from stream_detector.aggregate.buckets import BucketStep, TimedEvents
from stream_detector.aggregate.features import FeaturePlan
from stream_detector.aggregate.sketch import hash_values
from stream_detector.aggregate.streams import StreamAggregators
from stream_detector.config import Settings, column_name
from stream_detector.engine.decode import Decoder, RecordDecoder
from stream_detector.engine.types import Decoded, EventBatch, Reject

log = structlog.get_logger(__name__)


class AggregatingDecoder:
    """The RecordDecoder of input.mode = "aggregate": stateful, since buckets stay open across
    batches, so the detector, file sources and training take it in the Decoder's place."""

    def __init__(self, settings: Settings, now: Callable[[], float] = time.time) -> None:
        config = settings.aggregate
        self.plan = FeaturePlan.of(config)
        # The raw events' own numeric fields; empty when every feature is a count or distinct,
        # which model_copy allows because these are not model features.
        raw_input = settings.input.model_copy(
            update={"value_fields": self.plan.numeric_fields, "label_field": None}
        )
        self._decoder = Decoder(raw_input, now)
        self._dead_letter_late = config.late_policy == "dead_letter"
        self.aggregator = StreamAggregators(
            self.plan, config.bucket_width_s, config.allowed_lateness_s, config.idle_timeout_s
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.plan.names

    @property
    def csv_delimiter(self) -> str:
        return self._decoder.csv_delimiter

    def decode_messages(
        self,
        payloads: Sequence[bytes],
        keys: Sequence[bytes | None] | None = None,
        broker_ts_ms: Sequence[int] | np.ndarray | None = None,
        streams: Sequence[int] | np.ndarray | None = None,
    ) -> Decoded:
        """Fold one consumed batch into the buckets; return the buckets it closed.

        `streams` gives each message's source stream (see aggregate/streams.py: one watermark
        per input partition); None means one stream.
        """
        decoded, raw = self._decoder.decode_with_fields(
            payloads, keys, broker_ts_ms, self.plan.distinct_fields + self.plan.condition_fields
        )
        event_streams = None if streams is None else np.asarray(streams)[decoded.batch.index]
        return self._bucket(decoded, raw, event_streams)

    def decode_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Decoded:
        """Fold a table of raw events (a CSV file) into the buckets, as decode_messages."""
        decoded = self._decoder.decode_columns(columns)
        rows = decoded.batch.index
        absent = [None] * len(rows)
        fields = self.plan.distinct_fields + self.plan.condition_fields
        names = [column_name(field) for field in fields]
        raw = [
            np.asarray(columns[name], dtype=object)[rows] if name in columns else absent
            for name in names
        ]
        n_distinct = len(self.plan.distinct_fields)
        for j, condition in enumerate(self.plan.conditions, start=n_distinct):
            raw[j] = _cells_as_json(raw[j], condition.values)
        return self._bucket(decoded, raw)

    def flush(self) -> Decoded:
        """The buckets still open, closed because the input has ended (see
        `BucketAggregator.flush`); their `index` is -1, closed by no message."""
        step = self.aggregator.flush()
        closed = EventBatch(index=step.index, keys=step.keys, ts=step.end_ts, values=step.values)
        return Decoded(batch=closed, records=0)

    def _bucket(
        self,
        decoded: Decoded,
        raw: Sequence[Sequence[Any]],
        streams: np.ndarray | None = None,
    ) -> Decoded:
        """`raw`: the raw values of the plan's distinct fields, then of its condition fields."""
        batch = decoded.batch
        n = len(batch)
        n_distinct = len(self.plan.distinct_fields)
        hashes = np.zeros((n, n_distinct), dtype=np.uint64)
        present = np.zeros(hashes.shape, dtype=bool)
        for j, column in enumerate(raw[:n_distinct]):
            hashes[:, j], present[:, j] = hash_values(column)
        step = self.aggregator.add(
            TimedEvents(
                index=batch.index,
                keys=batch.keys,
                ts=batch.ts,
                numbers=self.plan.numbers(batch.values, raw[n_distinct:]),
                hashes=hashes,
                present=present,
            ),
            streams,
        )
        rejects = decoded.rejects
        late = np.flatnonzero(step.late)
        if late.size:
            log.debug("late events", count=int(late.size), dead_lettered=self._dead_letter_late)
            if self._dead_letter_late:
                rejects = sorted(
                    rejects + self._late_rejects(batch, step, late),
                    key=operator.attrgetter("index"),
                )
        closed = EventBatch(index=step.index, keys=step.keys, ts=step.end_ts, values=step.values)
        records = n + len(decoded.rejects) + decoded.filtered
        return Decoded(batch=closed, rejects=rejects, records=records, filtered=decoded.filtered)

    def _late_rejects(self, batch: EventBatch, step: BucketStep, late: np.ndarray) -> list[Reject]:
        width = self.aggregator.width
        lateness = self.aggregator.lateness
        return [
            Reject(
                int(batch.index[i]),
                "late",
                f"event time {batch.ts[i]:.3f} is in the bucket ending "
                f"{(np.floor(batch.ts[i] / width) + 1) * width:.3f}, already closed by the "
                f"watermark {step.watermark[i]:.3f} (latest event time minus "
                f"aggregate.allowed_lateness_s={lateness:g})",
            )
            for i in late.tolist()
        ]


def _cells_as_json(cells: Sequence[Any] | np.ndarray, values: Sequence[Any]) -> list[Any]:
    """A CSV column a condition reads, as the JSON values a topic would carry: text that reads
    as a number becomes one when the condition compares numbers, 'true'/'false' (any case) a
    bool when it compares bools, an empty cell absent; any other text stays text. So a file and
    a topic carrying the same events count the same."""
    numbers = any(type(v) in (int, float) for v in values)
    bools = any(type(v) is bool for v in values)
    return [_cell_as_json(cell, numbers, bools) if type(cell) is str else cell for cell in cells]


def _cell_as_json(cell: str, numbers: bool, bools: bool) -> Any:
    text = cell.strip()
    if not text:
        return None
    if bools and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if numbers:
        try:
            return float(text)
        except ValueError:
            pass
    return cell


def decoder_for(settings: Settings) -> RecordDecoder:
    """The decoder raw messages go through under these settings (one per detector: in aggregate
    mode it holds that detector's open buckets)."""
    if settings.input.mode == "aggregate":
        return AggregatingDecoder(settings)
    return Decoder(settings.input)
