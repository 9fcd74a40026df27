"""Turning per-window exceedances into episodes: one open and one resolve alert each.

A key's windows overlap, so a single incident makes many consecutive windows exceed; alerting on
each would bury the operator. Per key the tracker instead waits for `min_consecutive` exceeding
windows in a row (a lone spike is not an incident), emits one open alert, keeps the episode open
while windows exceed, and resolves it with one alert after `cooldown` normal windows in a row
(a short dip inside an incident does not close it).

The exceeding windows that led up to the opening count as part of the episode (`windows_over`,
the peak score), since they are the start of the same incident.

Most keys in a batch are quiet: no exceedance, no open episode, no pending run. They are settled
with array operations; only the few keys with activity step through a small Python state machine
over their windows, in arrival order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from stream_detector.config import EpisodeConfig
from stream_detector.engine.alerts import (
    Alert,
    AlertKind,
    FeatureContribution,
    alert_id_for,
    episode_id_for,
    severity_for,
    top_contributions,
)
from stream_detector.engine.types import ScoredWindows
from stream_detector.state.slots import SlotArrays

log = structlog.get_logger(__name__)


def _grow(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


@dataclass(slots=True)
class _KeyState:
    """One active key's state, lifted out of the arrays while its windows are stepped through."""

    run: int
    is_open: bool
    calm: int
    windows_over: int
    episode_start: float
    peak: float


class EpisodeTracker(SlotArrays):
    """Per-key episode state in arrays indexed by ring-buffer slot.

    run:            consecutive exceeding windows while no episode is open
    open:           whether an episode is open
    calm:           consecutive normal windows while open (the cool-down counter)
    windows_over:   exceeding windows in the open episode
    episode_start:  end time of the window that opened the episode (with the key and model
                    version it determines the episode id, so the id needs no storage)
    peak*:          the highest-scoring window of the run or episode (score, threshold and the
                    per-feature errors / actual / expected needed to explain it at resolve time)
    """

    SLOT_FIELDS = (
        "run", "open", "calm", "windows_over", "episode_start", "peak",
        "peak_threshold", "peak_errors", "peak_actual", "peak_expected",
    )

    def __init__(
        self,
        config: EpisodeConfig,
        feature_names: Sequence[str],
        model_version: str,
        capacity: int = 1024,
    ) -> None:
        self._min_consecutive = int(config.min_consecutive)
        self._cooldown = int(config.cooldown)
        self._top = int(config.top_features)
        self._names = tuple(feature_names)
        self._model_version = model_version
        n_features = len(self._names)
        self._run = np.zeros(capacity, dtype=np.int64)
        self._open = np.zeros(capacity, dtype=bool)
        self._calm = np.zeros(capacity, dtype=np.int64)
        self._windows_over = np.zeros(capacity, dtype=np.int64)
        self._episode_start = np.zeros(capacity, dtype=np.float64)
        self._peak = np.zeros(capacity, dtype=np.float64)
        self._peak_threshold = np.zeros(capacity, dtype=np.float64)
        self._peak_errors = np.zeros((capacity, n_features), dtype=np.float32)
        self._peak_actual = np.zeros((capacity, n_features), dtype=np.float32)
        self._peak_expected = np.zeros((capacity, n_features), dtype=np.float32)

    @property
    def capacity(self) -> int:
        return int(self._run.shape[0])

    @property
    def open_episodes(self) -> int:
        return int(np.count_nonzero(self._open))

    def ensure_capacity(self, capacity: int) -> None:
        """Grow to at least `capacity` slots, keeping every existing key's state."""
        if capacity <= self.capacity:
            return
        for name in self.SLOT_FIELDS:
            setattr(self, "_" + name, _grow(getattr(self, "_" + name), capacity))

    def reset(self, slots: np.ndarray) -> None:
        """Forget freed slots, dropping any open episode without a resolve alert.

        A slot is freed because its key was evicted (silent past idle_ttl_s, or pushed out by
        max_keys): no further window of that key will be seen, so recovery was never observed and
        a resolve alert would claim something the detector does not know. Consumers should expire
        open alerts they hear nothing more about.
        """
        slots = np.asarray(slots, dtype=np.int64)
        dropped = int(np.count_nonzero(self._open[slots]))
        if dropped:
            log.info("open episodes dropped with evicted keys", dropped=dropped)
        self._run[slots] = 0
        self._open[slots] = False
        self._calm[slots] = 0
        self._windows_over[slots] = 0

    def update(self, scored: ScoredWindows) -> list[Alert]:
        """Advance every key over its windows (arrival order); return alerts in arrival order."""
        if len(scored) == 0:
            return []
        slots = np.asarray(scored.slots, dtype=np.int64)
        exceed = np.asarray(scored.exceed, dtype=bool)
        keys, inverse = np.unique(slots, return_inverse=True)
        any_exceed = np.bincount(inverse, weights=exceed, minlength=keys.shape[0]) > 0
        active = any_exceed | self._open[keys]
        # Quiet keys: a pending run of exceedances is broken by this call's normal windows.
        self._run[keys[~active]] = 0
        if not active.any():
            return []

        rows = np.flatnonzero(active[inverse])
        rows = rows[np.argsort(inverse[rows], kind="stable")]
        boundaries = np.flatnonzero(np.diff(inverse[rows])) + 1
        exceed_list = exceed.tolist()
        found: list[tuple[int, Alert]] = []
        for key_rows in np.split(rows, boundaries):
            slot = int(slots[key_rows[0]])
            state = self._load(slot)
            for row in key_rows.tolist():
                alert = self._step(slot, state, scored, row, exceed_list[row])
                if alert is not None:
                    found.append((row, alert))
            self._store(slot, state)
        found.sort(key=lambda item: item[0])
        return [alert for _, alert in found]

    def _load(self, slot: int) -> _KeyState:
        return _KeyState(
            run=int(self._run[slot]),
            is_open=bool(self._open[slot]),
            calm=int(self._calm[slot]),
            windows_over=int(self._windows_over[slot]),
            episode_start=float(self._episode_start[slot]),
            peak=float(self._peak[slot]),
        )

    def _store(self, slot: int, state: _KeyState) -> None:
        self._run[slot] = state.run
        self._open[slot] = state.is_open
        self._calm[slot] = state.calm
        self._windows_over[slot] = state.windows_over
        self._episode_start[slot] = state.episode_start
        self._peak[slot] = state.peak

    def _step(
        self, slot: int, state: _KeyState, scored: ScoredWindows, row: int, exceeds: bool
    ) -> Alert | None:
        """One window of one key; returns the alert it causes, if any."""
        if exceeds:
            if not state.is_open and state.run == 0:
                state.peak = -np.inf  # a new run: forget the previous run's peak
            self._track_peak(slot, state, scored, row)
            if state.is_open:
                state.calm = 0
                state.windows_over += 1
                return None
            state.run += 1
            if state.run < self._min_consecutive:
                return None
            state.is_open, state.calm, state.windows_over, state.run = True, 0, state.run, 0
            state.episode_start = float(scored.end_ts[row])
            features = self._explain(
                scored.feature_errors[row], scored.actual[row], scored.expected[row]
            )
            score, threshold = float(scored.scores[row]), float(scored.thresholds[row])
            return self._alert("open", state, scored, row, score, threshold, features)
        if not state.is_open:
            state.run = 0
            return None
        state.calm += 1
        if state.calm < self._cooldown:
            return None
        features = self._explain(
            self._peak_errors[slot], self._peak_actual[slot], self._peak_expected[slot]
        )
        alert = self._alert(
            "resolve", state, scored, row, state.peak, float(self._peak_threshold[slot]), features
        )
        state.is_open, state.calm, state.windows_over = False, 0, 0
        return alert

    def _explain(
        self, errors: np.ndarray, actual: np.ndarray, expected: np.ndarray
    ) -> tuple[FeatureContribution, ...]:
        return top_contributions(self._names, errors, actual, expected, self._top)

    def _track_peak(self, slot: int, state: _KeyState, scored: ScoredWindows, row: int) -> None:
        score = float(scored.scores[row])
        if score <= state.peak:
            return
        state.peak = score
        self._peak_threshold[slot] = scored.thresholds[row]
        self._peak_errors[slot] = scored.feature_errors[row]
        self._peak_actual[slot] = scored.actual[row]
        self._peak_expected[slot] = scored.expected[row]

    def _alert(
        self,
        kind: AlertKind,
        state: _KeyState,
        scored: ScoredWindows,
        row: int,
        score: float,
        threshold: float,
        features: tuple[FeatureContribution, ...],
    ) -> Alert:
        key = str(scored.keys[row])
        episode_id = episode_id_for(key, state.episode_start, self._model_version)
        alert = Alert(
            kind=kind,
            alert_id=alert_id_for(episode_id, kind),
            episode_id=episode_id,
            key=key,
            window_start=float(scored.start_ts[row]),
            window_end=float(scored.end_ts[row]),
            score=score,
            threshold=threshold,
            severity=severity_for(score, threshold),
            top_features=features,
            model_version=self._model_version,
            episode_start=state.episode_start,
            windows_over=state.windows_over,
            event_index=int(scored.event_index[row]),
        )
        log.debug(
            "episode " + ("opened" if kind == "open" else "resolved"),
            key=alert.key,
            episode_id=alert.episode_id,
            score=alert.score,
            windows_over=alert.windows_over,
        )
        return alert
