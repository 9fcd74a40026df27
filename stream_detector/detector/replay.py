"""Back-testing: stream a file through the engine in arrival order and record what it decided.

The output has one JSON line per input record, in input order, so it can be joined back to the
source by `offset` (the record's position in the file). Rejected records appear too, with their
reason, because a back-test that silently skipped bad lines would hide a mapping problem.
Records that input.filter skips get no line (they are no part of what the detector watches, and
a mixed feed would drown the output in them); they still take their offset, and the summary
counts them as `filtered`, apart from `rejected`.

In aggregate mode what the detector scores is not a record but a closed bucket of a key's
records, so a scored line describes a bucket: `bucket_start` and `bucket_end` (event time) and
`closed_by_offset`, the record whose arrival closed it (null for the buckets still open when the
file ended, which are closed then, as the watermark would close them on a live stream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from stream_detector.detector.facade import DetectionResult, Detector
from stream_detector.detector.sources import read_batches
from stream_detector.engine.flat import flat_feature_names


@dataclass
class ReplaySummary:
    records: int = 0
    rejected: int = 0
    filtered: int = 0
    windows_scored: int = 0
    alerts_opened: int = 0
    alerts_resolved: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def _float_or_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


class _EpisodeCursor:
    """Follows open episodes per key across batches, from the alerts the engine emitted."""

    def __init__(self, feature_names: tuple[str, ...]) -> None:
        self._open: dict[str, str] = {}
        self._names = feature_names

    def lines(
        self, result: DetectionResult, offset: int, bucket_width: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """The JSON lines of one batch's result; `bucket_width` in aggregate mode."""
        batch = result.decoded.batch
        scored = result.scored
        n_rows = len(batch)
        score = np.full(n_rows, np.nan, dtype=np.float64)
        threshold = np.full(n_rows, np.nan, dtype=np.float64)
        exceed = np.zeros(n_rows, dtype=bool)
        score[scored.event_index] = scored.scores
        threshold[scored.event_index] = scored.thresholds
        exceed[scored.event_index] = scored.exceed
        # Flat lines are rare: only their windows are looked at one by one.
        flat_at = {
            int(scored.event_index[window]): list(
                flat_feature_names(self._names, scored.flat[window])
            )
            for window in np.flatnonzero(scored.flat.any(axis=1)).tolist()
        }
        alerts_at: dict[int, list[Any]] = {}
        for alert in result.alerts:
            alerts_at.setdefault(alert.event_index, []).append(alert)

        entries: list[tuple[int, dict[str, Any]]] = []
        for row in range(n_rows):
            key = batch.keys[row]
            kinds = []
            for alert in alerts_at.get(row, ()):
                # A new key's episode opens at an event that no window scored: say why.
                kinds.append("new_key" if alert.reason == "new_key" else alert.kind)
                if alert.kind == "open":
                    self._open[key] = alert.episode_id
            index = int(batch.index[row])
            where: dict[str, Any]
            if bucket_width is None:
                where = {"offset": offset + index, "key": key, "ts": float(batch.ts[row])}
            else:
                end = float(batch.ts[row])
                where = {
                    "bucket_start": end - bucket_width,
                    "bucket_end": end,
                    "closed_by_offset": offset + index if index >= 0 else None,
                    "key": key,
                }
            line = {
                **where,
                "score": _float_or_none(score[row]),
                "threshold": _float_or_none(threshold[row]),
                "anomaly": bool(exceed[row]),
                "flat_features": flat_at.get(row, []),
                "episode_id": self._open.get(key),
                "alerts": kinds,
            }
            if "resolve" in kinds:
                self._open.pop(key, None)
            entries.append((int(batch.index[row]), line))
        for reject in result.decoded.rejects:
            entries.append(
                (
                    reject.index,
                    {
                        "offset": offset + reject.index,
                        "rejected": reject.reason,
                        "detail": reject.detail,
                    },
                )
            )
        entries.sort(key=lambda item: item[0])
        for _, line in entries:
            yield line


def replay(
    input_path: Path,
    detector: Detector,
    out: IO[bytes],
    *,
    batch_size: int = 4096,
    on_batch: Callable[[ReplaySummary], None] | None = None,
) -> ReplaySummary:
    """Replay `input_path` through `detector`, writing JSON lines to `out`."""
    summary = ReplaySummary()
    cursor = _EpisodeCursor(detector.feature_names)
    aggregators = detector.aggregators()
    width = None if aggregators is None else aggregators.width
    offset = 0
    for decoded in read_batches(input_path, detector.decoder, batch_size=batch_size):
        result = detector.process(decoded)
        out.writelines(orjson.dumps(line) + b"\n" for line in cursor.lines(result, offset, width))
        # In aggregate mode the batch holds buckets, not records: decode counts the records.
        records = decoded.records
        if records is None:
            records = len(decoded.batch) + len(decoded.rejects) + decoded.filtered
        offset += records
        summary.records += records
        summary.rejected += len(decoded.rejects)
        summary.filtered += decoded.filtered
        _count(summary, result)
        if on_batch is not None:
            on_batch(summary)
    held = detector.decoder.flush()  # the buckets still open when the file ends
    if len(held.batch):
        result = detector.process(held)
        out.writelines(orjson.dumps(line) + b"\n" for line in cursor.lines(result, offset, width))
        _count(summary, result)
    return summary


def _count(summary: ReplaySummary, result: DetectionResult) -> None:
    summary.windows_scored += len(result.scored)
    summary.alerts_opened += sum(1 for a in result.alerts if a.kind == "open")
    summary.alerts_resolved += sum(1 for a in result.alerts if a.kind == "resolve")
