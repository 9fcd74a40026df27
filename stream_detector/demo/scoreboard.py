"""Injected versus detected, live: the demo's running precision and recall.

Matching is by key and event time. An injected anomaly [start, end] is *detected* when an open
alert of its key has a window [window_start, window_end] overlapping [start, end + slack]; the
slack (about one window's span) lets an alert whose window still holds the anomaly's last readings,
or the return to normal after it, count. An alert episode whose opening window overlaps no injected
anomaly that way is a *false positive*. Resolve alerts close episodes but do not change the score.

Recall only counts anomalies the detector has had every chance to see: those whose end + slack lies
before the event time the service has processed (`horizon`), plus any already detected. Counting
anomalies that are still being produced would make live recall look worse than it is.

Both sides arrive one record at a time (an anomaly when the feed injects it, an alert when it is
read from the alert topic); both are rare, so each is matched on arrival against the other side's
records of the same key, and scoring is array arithmetic over the match flags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_detector.scenarios.telemetry import ANOMALY_KINDS, InjectedAnomaly


@dataclass(frozen=True)
class Score:
    """One reading of the scoreboard; `by_kind` maps kind -> (detected, injected)."""

    injected: int
    detected: int
    episodes: int
    true_episodes: int
    pending: int
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def false_positives(self) -> int:
        return self.episodes - self.true_episodes

    @property
    def precision(self) -> float | None:
        """None before the first alert: no claim made is neither right nor wrong."""
        return self.true_episodes / self.episodes if self.episodes else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.injected if self.injected else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "injected": self.injected,
            "detected": self.detected,
            "missed": self.injected - self.detected,
            "pending": self.pending,
            "alert_episodes": self.episodes,
            "false_positives": self.false_positives,
            "precision": self.precision,
            "recall": self.recall,
            "by_kind": {
                kind: {"detected": d, "injected": n} for kind, (d, n) in self.by_kind.items()
            },
        }


class Scoreboard:
    """Accumulates injected anomalies and open alerts; `score(horizon)` reads it at any time."""

    def __init__(self, slack_s: float, kinds: Sequence[str] = ANOMALY_KINDS) -> None:
        """`kinds`: the anomaly kinds the feed injects (the IoT ones, or the network attacks),
        in the order the per-kind figures are shown."""
        self._slack = float(slack_s)
        self._kinds = tuple(kinds)
        self._anomalies: list[InjectedAnomaly] = []
        self._ends: list[float] = []
        self._kind_ids: list[int] = []
        self._detected: list[bool] = []
        self._anomalies_of: dict[str, list[int]] = {}
        # Open alerts: the opening window of each episode, and whether it matched an anomaly.
        self._windows: list[tuple[float, float]] = []
        self._matched: list[bool] = []
        self._alerts_of: dict[str, list[int]] = {}
        self._seen_alert_ids: set[str] = set()

    def _overlaps(self, anomaly: InjectedAnomaly, window: tuple[float, float]) -> bool:
        start, end = window
        return start <= anomaly.end_ts + self._slack and end >= anomaly.start_ts

    def add_injected(self, anomalies: Iterable[InjectedAnomaly]) -> None:
        for anomaly in anomalies:
            index = len(self._anomalies)
            self._anomalies.append(anomaly)
            self._ends.append(anomaly.end_ts)
            self._kind_ids.append(self._kinds.index(anomaly.kind))
            alerts = self._alerts_of.get(anomaly.key, ())
            hits = [i for i in alerts if self._overlaps(anomaly, self._windows[i])]
            for i in hits:
                self._matched[i] = True
            self._detected.append(bool(hits))
            self._anomalies_of.setdefault(anomaly.key, []).append(index)

    def add_alert(self, data: Mapping[str, Any]) -> bool:
        """Take one alert's CloudEvent `data`; True if it opened an episode not seen before.

        Re-delivered alerts (at-least-once) carry the same alert_id and are counted once.
        """
        alert_id = str(data["alert_id"])
        if data["kind"] != "open" or alert_id in self._seen_alert_ids:
            return False
        self._seen_alert_ids.add(alert_id)
        key = str(data["key"])
        window = (float(data["window_start"]), float(data["window_end"]))
        index = len(self._windows)
        self._windows.append(window)
        anomalies = self._anomalies_of.get(key, ())
        hits = [i for i in anomalies if self._overlaps(self._anomalies[i], window)]
        for i in hits:
            self._detected[i] = True
        self._matched.append(bool(hits))
        self._alerts_of.setdefault(key, []).append(index)
        return True

    def anomaly_for(self, data: Mapping[str, Any]) -> InjectedAnomaly | None:
        """The injected anomaly an alert's window overlaps (the latest one), for display."""
        window = (float(data["window_start"]), float(data["window_end"]))
        hits = [
            self._anomalies[i]
            for i in self._anomalies_of.get(str(data["key"]), ())
            if self._overlaps(self._anomalies[i], window)
        ]
        return hits[-1] if hits else None

    def score(self, horizon_ts: float) -> Score:
        """The scoreboard once the detector has processed every event up to `horizon_ts`."""
        detected = np.array(self._detected, dtype=bool)
        ends = np.array(self._ends, dtype=np.float64)
        kinds = np.array(self._kind_ids, dtype=np.int64)
        counted = detected | (ends + self._slack <= horizon_ts)
        n_kinds = len(self._kinds)
        injected_by_kind = np.bincount(kinds[counted], minlength=n_kinds)
        detected_by_kind = np.bincount(kinds[detected], minlength=n_kinds)
        return Score(
            injected=int(counted.sum()),
            detected=int(detected.sum()),
            episodes=len(self._matched),
            true_episodes=int(np.count_nonzero(self._matched)),
            pending=int(len(detected) - counted.sum()),
            by_kind={
                kind: (int(detected_by_kind[i]), int(injected_by_kind[i]))
                for i, kind in enumerate(self._kinds)
                if injected_by_kind[i]
            },
        )
