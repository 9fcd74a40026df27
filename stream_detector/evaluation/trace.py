"""What one method decided over the stream: its window scores and its alert episodes per key.

Alerts are the detector's real output, so episodes are rebuilt from them alone: an episode is
active from the event that triggered its open alert to the end of its last exceeding window, which
its resolve alert reports (`anomaly_end`; the resolve itself comes a cool-down later, and the calm
windows of the cool-down are not part of the anomaly). An episode still open when a key's data
ends (or dropped without a resolve because the engine evicted the key) is taken to last until the
key's last event. The alerts themselves are kept
beside the episodes: a simulated operator answers them with feedback that names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream_detector.engine.alerts import Alert
from stream_detector.engine.types import ScoredWindows
from stream_detector.evaluation.datasets import Stream

EpisodeAlerts = tuple[Alert, Alert | None]  # an episode's open alert and its resolve, if any


@dataclass(frozen=True)
class MethodTrace:
    """Per key (index into dataset.channels): window scores and episodes in test-local positions.

    scores[k]:    float64 [n, 3] columns (test-local position, score, threshold), test part only
    episodes[k]:  int64 [E, 2] inclusive test-local [start, end]; an episode opened during the
                  train part but still active in the test part starts at 0
    alerts[k]:    per row of episodes[k], its (open alert, resolve alert or None if it never
                  resolved)
    muted:        alerts that the feedback's mutes kept from being published (and from episodes)
    """

    name: str
    scores: dict[int, np.ndarray]
    episodes: dict[int, np.ndarray]
    seconds: float
    alerts: dict[int, list[EpisodeAlerts]] = field(default_factory=dict)
    muted: int = 0


class TraceRecorder:
    """Accumulates one method's scored windows and alerts, batch by batch, in stream rows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = 0.0
        self.muted = 0
        self._rows: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._thresholds: list[np.ndarray] = []
        self._opened: dict[str, tuple[int, Alert]] = {}
        self._spans: list[tuple[int, int, EpisodeAlerts]] = []

    def record(
        self, offset: int, scored: ScoredWindows, alerts: list[Alert], muted: int = 0
    ) -> None:
        self._rows.append(offset + np.asarray(scored.event_index, dtype=np.int64))
        self._scores.append(np.asarray(scored.scores, dtype=np.float64))
        self._thresholds.append(np.asarray(scored.thresholds, dtype=np.float64))
        self.muted += muted
        for alert in alerts:  # rare: one per episode transition
            row = offset + alert.event_index
            if alert.kind == "open":
                self._opened[alert.episode_id] = (row, alert)
            elif (opened := self._opened.pop(alert.episode_id, None)) is not None:
                start, open_alert = opened
                self._spans.append((start, row, (open_alert, alert)))

    def finish(self, stream: Stream) -> MethodTrace:
        n_keys = int(stream.key_id.max()) + 1 if len(stream) else 0
        rows_of = _RowsByKey(stream, n_keys)
        spans = [
            (start, rows_of.end_row(start, resolved_at, alerts[1]), alerts)
            for start, resolved_at, alerts in self._spans
        ] + [
            (start, rows_of.last_row(start), (alert, None))
            for start, alert in self._opened.values()
        ]
        episodes, alerts = _episodes_by_key(stream, spans)
        return MethodTrace(
            self.name, self._scores_by_key(stream), episodes, self.seconds, alerts, self.muted
        )

    def _scores_by_key(self, stream: Stream) -> dict[int, np.ndarray]:
        rows = np.concatenate(self._rows) if self._rows else np.empty(0, dtype=np.int64)
        table = np.column_stack(
            [
                stream.local[rows],
                np.concatenate(self._scores) if self._scores else np.empty(0),
                np.concatenate(self._thresholds) if self._thresholds else np.empty(0),
            ]
        )
        keep = stream.is_test[rows]
        return _split_by_key(stream.key_id[rows][keep], table[keep])


class _RowsByKey:
    """Each key's stream rows in order (a key's event times rise with its rows), grouped once, to
    find where each episode ends (its anomaly's end, or the key's last row) without a pass over
    the stream per episode."""

    def __init__(self, stream: Stream, n_keys: int) -> None:
        self._stream = stream
        self._rows_by_key = np.argsort(stream.key_id, kind="stable")
        self._first = np.searchsorted(stream.key_id[self._rows_by_key], np.arange(n_keys + 1))

    def _rows(self, row: int) -> np.ndarray:
        """The rows of the key of stream row `row`, in order."""
        key = self._stream.key_id[row]
        return self._rows_by_key[self._first[key] : self._first[key + 1]]

    def last_row(self, row: int) -> int:
        """The last row of the key of stream row `row`: where an episode never resolved ends."""
        return int(self._rows(row)[-1])

    def end_row(self, start: int, resolved_at: int, resolve: Alert) -> int:
        """The row of the key's last event at or before the resolve's `anomaly_end`, between the
        episode's opening row and the resolve's; the resolve's own row when the alert does not
        say where the anomaly ended."""
        if resolve.anomaly_end is None:
            return resolved_at
        rows = self._rows(start)
        at = np.searchsorted(self._stream.ts[rows], resolve.anomaly_end, side="right") - 1
        return int(min(max(rows[at] if at >= 0 else start, start), resolved_at))


def _episodes_by_key(
    stream: Stream, spans: list[tuple[int, int, EpisodeAlerts]]
) -> tuple[dict[int, np.ndarray], dict[int, list[EpisodeAlerts]]]:
    """Test-local episode ranges per key, in order of start, and their alerts row for row."""
    rows = np.array([(start, end) for start, end, _ in spans], dtype=np.int64).reshape(-1, 2)
    local = stream.local[rows]
    keep = np.flatnonzero(local[:, 1] >= 0)  # an episode over before the test part: not scored
    ranges = np.column_stack([np.maximum(local[keep, 0], 0), local[keep, 1]])
    key_ids = stream.key_id[rows[keep, 0]]
    order = np.lexsort((ranges[:, 0], key_ids))
    alerts: dict[int, list[EpisodeAlerts]] = {}
    for key_id, span in zip(key_ids[order].tolist(), keep[order].tolist(), strict=True):
        alerts.setdefault(key_id, []).append(spans[span][2])
    return _split_by_key(key_ids[order], ranges[order]), alerts


def _split_by_key(key_ids: np.ndarray, table: np.ndarray) -> dict[int, np.ndarray]:
    if len(key_ids) == 0:
        return {}
    order = np.argsort(key_ids, kind="stable")
    unique, first = np.unique(key_ids[order], return_index=True)
    pieces = np.split(table[order], first[1:])
    return {int(k): piece for k, piece in zip(unique.tolist(), pieces, strict=True)}
