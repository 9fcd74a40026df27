"""Precision, recall and F1 three ways, and detection delay, for one key's labelled test series.

Everything works in the key's own index space (position of an event in its test series), with
ranges as inclusive ``[start, end]`` rows of an int64 ``[R, 2]`` array. The three definitions
answer different questions and disagree a lot on long anomalies, so each is reported by name:

- point-wise: every test event is one sample; predicted positive when an alert was active on it.
- point-adjusted: as point-wise, but a labelled range with any predicted point counts as fully
  predicted (the common, generous convention of many papers).
- event-wise: a labelled range is a true positive if any alert episode overlaps it, else a false
  negative; an alert episode overlapping no labelled range is a false positive. This is the
  definition behind the published SMAP/MSL reference (Hundman et al., KDD 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    """Confusion counts; summing them over keys gives micro-averaged figures. True negatives
    exist point-wise only (an event-wise count has no "normal range" to get right)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def precision(self) -> float:
        # No prediction at all is neither right nor wrong; 0 keeps a silent detector from looking
        # perfect in a table sorted by precision.
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_alarm_rate(self) -> float:
        """FAR: the share of normal samples flagged (point-wise counts only)."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    @property
    def missed_alarm_rate(self) -> float:
        """MAR: the share of anomalous samples not flagged, 1 - recall."""
        return self.fn / (self.fn + self.tp) if self.fn + self.tp else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def label_ranges(labels: np.ndarray) -> np.ndarray:
    """Maximal runs of label 1 as inclusive ``[start, end]`` rows."""
    flags = np.asarray(labels).astype(bool).astype(np.int8)
    edges = np.diff(np.concatenate(([0], flags, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return np.stack([starts, ends], axis=1).astype(np.int64).reshape(-1, 2)


def ranges_to_mask(ranges: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of length n, true inside any range (ranges are clipped to ``[0, n)``)."""
    ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    starts = np.clip(ranges[:, 0], 0, n)
    ends = np.clip(ranges[:, 1] + 1, 0, n)
    keep = starts < ends
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, starts[keep], 1)
    np.add.at(delta, ends[keep], -1)
    return np.cumsum(delta[:n]) > 0


def pointwise_counts(predicted: np.ndarray, labels: np.ndarray) -> Counts:
    pred = np.asarray(predicted, dtype=bool)
    truth = np.asarray(labels).astype(bool)
    return Counts(
        tp=int(np.count_nonzero(pred & truth)),
        fp=int(np.count_nonzero(pred & ~truth)),
        fn=int(np.count_nonzero(~pred & truth)),
        tn=int(np.count_nonzero(~pred & ~truth)),
    )


def point_adjust(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Predictions with every labelled range that has a predicted point filled in completely."""
    pred = np.asarray(predicted, dtype=bool)
    ranges = label_ranges(labels)
    hits_before = np.concatenate(([0], np.cumsum(pred, dtype=np.int64)))
    hit = hits_before[ranges[:, 1] + 1] - hits_before[ranges[:, 0]] > 0
    return pred | ranges_to_mask(ranges[hit], len(pred))


def overlaps(label: np.ndarray, alerts: np.ndarray) -> np.ndarray:
    """[R, A] boolean: range r and range a (rows of inclusive [start, end], indices or times)
    share at least one point."""
    return (label[:, None, 0] <= alerts[None, :, 1]) & (alerts[None, :, 0] <= label[:, None, 1])


def false_alerts(label: np.ndarray, alerts: np.ndarray) -> np.ndarray:
    """[A] boolean: the alert episodes that overlap no labelled range, the event-wise false
    positives (the simulated operator of evaluate --write-false-positives marks the same ones)."""
    label = np.asarray(label, dtype=np.int64).reshape(-1, 2)
    alerts = np.asarray(alerts, dtype=np.int64).reshape(-1, 2)
    return ~overlaps(label, alerts).any(axis=0)


def eventwise_counts(label: np.ndarray, alerts: np.ndarray) -> Counts:
    label = np.asarray(label, dtype=np.int64).reshape(-1, 2)
    alerts = np.asarray(alerts, dtype=np.int64).reshape(-1, 2)
    detected = overlaps(label, alerts).any(axis=1)
    return Counts(
        tp=int(np.count_nonzero(detected)),
        fp=int(np.count_nonzero(false_alerts(label, alerts))),
        fn=int(np.count_nonzero(~detected)),
    )


def detection_delays(
    label: np.ndarray, alerts: np.ndarray, ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per detected labelled range: (steps, seconds) from its start to its first overlapping alert.

    An alert already active when the range starts detects it with zero delay, so delays are
    clipped at 0 rather than rewarding an alert for having been open early.
    """
    label = np.asarray(label, dtype=np.int64).reshape(-1, 2)
    alerts = np.asarray(alerts, dtype=np.int64).reshape(-1, 2)
    overlap = overlaps(label, alerts)
    detected = overlap.any(axis=1)
    # Earliest-starting overlapping alert per range: mask the others with a start past any index.
    starts = np.where(overlap, alerts[None, :, 0], np.iinfo(np.int64).max)
    first = starts.min(axis=1, initial=np.iinfo(np.int64).max)[detected]
    range_start = label[detected, 0]
    seen = np.maximum(first, range_start)
    steps = seen - range_start
    seconds = np.asarray(ts, dtype=np.float64)[seen] - np.asarray(ts, dtype=np.float64)[range_start]
    return steps, seconds


@dataclass(frozen=True)
class KeyScores:
    """One method's figures on one key (or, summed, on a group of keys)."""

    point_wise: Counts
    point_adjusted: Counts
    event_wise: Counts
    delay_steps: np.ndarray
    delay_seconds: np.ndarray
    alerts: int

    def __add__(self, other: KeyScores) -> KeyScores:
        return KeyScores(
            self.point_wise + other.point_wise,
            self.point_adjusted + other.point_adjusted,
            self.event_wise + other.event_wise,
            np.concatenate([self.delay_steps, other.delay_steps]),
            np.concatenate([self.delay_seconds, other.delay_seconds]),
            self.alerts + other.alerts,
        )

    @staticmethod
    def zero() -> KeyScores:
        empty = np.empty(0, dtype=np.float64)
        return KeyScores(Counts(), Counts(), Counts(), empty, empty, 0)

    def as_dict(self) -> dict[str, object]:
        def stat(values: np.ndarray, fn: object) -> float | None:
            return float(fn(values)) if len(values) else None  # type: ignore[operator]

        return {
            "event_wise": self.event_wise.as_dict(),
            "point_wise": {
                **self.point_wise.as_dict(),
                "tn": self.point_wise.tn,
                "far": self.point_wise.false_alarm_rate,
                "mar": self.point_wise.missed_alarm_rate,
            },
            "point_adjusted": self.point_adjusted.as_dict(),
            "delay": {
                "detected_ranges": int(len(self.delay_steps)),
                "median_steps": stat(self.delay_steps, np.median),
                "mean_steps": stat(self.delay_steps, np.mean),
                "median_seconds": stat(self.delay_seconds, np.median),
                "mean_seconds": stat(self.delay_seconds, np.mean),
            },
            "alert_episodes": self.alerts,
        }


def score_key(labels: np.ndarray, alerts: np.ndarray, ts: np.ndarray) -> KeyScores:
    """All figures for one key's test series and the alert episodes active on it."""
    labels = np.asarray(labels)
    alerts = np.asarray(alerts, dtype=np.int64).reshape(-1, 2)
    predicted = ranges_to_mask(alerts, len(labels))
    truth = label_ranges(labels)
    steps, seconds = detection_delays(truth, alerts, ts)
    return KeyScores(
        point_wise=pointwise_counts(predicted, labels),
        point_adjusted=pointwise_counts(point_adjust(predicted, labels), labels),
        event_wise=eventwise_counts(truth, alerts),
        delay_steps=steps.astype(np.float64),
        delay_seconds=seconds,
        alerts=len(alerts),
    )
