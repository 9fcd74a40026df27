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
    OpenReason,
    ResolveReason,
    alert_id_for,
    episode_id_for,
    severity_for,
    top_contributions,
)
from stream_detector.engine.flat import flat_feature_names
from stream_detector.engine.slots import SlotArrays, slot_fields
from stream_detector.engine.types import ScoredWindows

log = structlog.get_logger(__name__)


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
                    per-feature errors / actual / expected / flat needed to explain it at resolve
                    time)
    anomaly_end:    end time of the episode's latest exceeding window (where the anomaly itself
                    ended, which the resolve alert reports)
    last_start/end: start and end time of the key's latest scored window (what a resolve alert
                    for an evicted key reports)

    A reset slot has no run and no open episode: a key whose partition moved elsewhere ends its
    episode here without an alert (the new owner restores and ends it), and an evicted key's
    episode was resolved first (`resolve_evicted`).
    """

    SLOT_FIELDS = (
        *slot_fields("run", "open", "calm", "windows_over"),
        # Each is written before it is read (the peak when a run starts, the start when the
        # episode opens, the last times by every scored window), so a reset leaves them be.
        *slot_fields(
            "episode_start", "peak", "peak_threshold", "peak_errors", "peak_actual",
            "peak_expected", "peak_flat", "anomaly_end", "last_start", "last_end", reset=False,
        ),
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
        self._run = np.empty(0, dtype=np.int64)
        self._open = np.empty(0, dtype=bool)
        self._calm = np.empty(0, dtype=np.int64)
        self._windows_over = np.empty(0, dtype=np.int64)
        self._episode_start = np.empty(0, dtype=np.float64)
        self._peak = np.empty(0, dtype=np.float64)
        self._peak_threshold = np.empty(0, dtype=np.float64)
        self._peak_errors = np.empty((0, n_features), dtype=np.float32)
        self._peak_actual = np.empty((0, n_features), dtype=np.float32)
        self._peak_expected = np.empty((0, n_features), dtype=np.float32)
        self._peak_flat = np.empty((0, n_features), dtype=bool)
        self._anomaly_end = np.empty(0, dtype=np.float64)
        self._last_start = np.empty(0, dtype=np.float64)
        self._last_end = np.empty(0, dtype=np.float64)
        self.ensure_capacity(capacity)

    @property
    def open_episodes(self) -> int:
        return int(np.count_nonzero(self._open))

    def resolve_evicted(self, slots: np.ndarray, keys: np.ndarray) -> list[Alert]:
        """Resolve alerts for the open episodes of evicted keys (``keys[i]`` held ``slots[i]``),
        read before the slots are reset with every other stage's.

        No further window of such a key will be seen, so without this resolve its alert would
        fire downstream forever; the alert says ``reason = "evicted"`` and reports the key's last
        scored window, and its id is the episode's usual resolve id.
        """
        return self.resolve_open(slots, keys, "evicted")

    def resolve_open(
        self, slots: np.ndarray, keys: np.ndarray, reason: ResolveReason
    ) -> list[Alert]:
        """Resolve the open episodes among ``slots`` (``keys[i]`` held ``slots[i]``) with
        ``reason``, reporting each key's last scored window, and close them."""
        alerts = []
        for row in np.flatnonzero(self._open[slots]).tolist():
            slot = int(slots[row])
            window = (float(self._last_start[slot]), float(self._last_end[slot]), -1)
            alerts.append(self._resolve(slot, self._load(slot), str(keys[row]), window, reason))
            self._open[slot] = False
        if alerts:
            log.info("open episodes resolved", resolved=len(alerts), reason=reason)
        return alerts

    def open_new_keys(
        self,
        slots: np.ndarray,
        keys: np.ndarray,
        ts: np.ndarray,
        event_index: np.ndarray,
        threshold: float,
    ) -> list[Alert]:
        """Open an episode (reason "new_key") on each of ``slots``, fresh slots whose keys
        (``keys[i]``) the model was not trained on, at the key's first event (time ``ts[i]``,
        ``event_index[i]``); ``threshold`` is the one judging the key until it has its own.

        The key's windows then carry the episode as any other: exceeding ones add to it, and
        `cooldown` calm ones resolve it. Until one exceeds, the episode's peak is this event
        (score 0, nothing to explain) and the anomaly ends where it began.
        """
        alerts = []
        for row, slot in enumerate(np.asarray(slots, dtype=np.int64).tolist()):
            at = float(ts[row])
            state = _KeyState(
                run=0, is_open=True, calm=0, windows_over=0, episode_start=at, peak=0.0
            )
            self._peak_threshold[slot] = threshold
            self._peak_errors[slot] = self._peak_actual[slot] = self._peak_expected[slot] = 0.0
            self._peak_flat[slot] = False
            self._anomaly_end[slot] = at
            self._last_start[slot] = self._last_end[slot] = at
            self._store(slot, state)
            alerts.append(
                self._alert(
                    "open", state, str(keys[row]), (at, at, int(event_index[row])),
                    0.0, threshold, (), (), "new_key",
                )
            )
        return alerts

    def update(self, scored: ScoredWindows) -> list[Alert]:
        """Advance every key over its windows (arrival order); return alerts in arrival order."""
        if len(scored) == 0:
            return []
        slots = np.asarray(scored.slots, dtype=np.int64)
        exceed = np.asarray(scored.exceed, dtype=bool)
        # Each key's latest window: the last occurrence of its slot, found from the end.
        latest, from_end = np.unique(slots[::-1], return_index=True)
        newest = len(slots) - 1 - from_end
        self._last_start[latest] = scored.start_ts[newest]
        self._last_end[latest] = scored.end_ts[newest]
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
            self._anomaly_end[slot] = scored.end_ts[row]
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
            return self._alert(
                "open", state, str(scored.keys[row]), self._window(scored, row),
                score, threshold, features, flat_feature_names(self._names, scored.flat[row]),
            )
        if not state.is_open:
            state.run = 0
            return None
        state.calm += 1
        if state.calm < self._cooldown:
            return None
        alert = self._resolve(
            slot, state, str(scored.keys[row]), self._window(scored, row), "cooldown"
        )
        state.is_open, state.calm, state.windows_over = False, 0, 0
        return alert

    @staticmethod
    def _window(scored: ScoredWindows, row: int) -> tuple[float, float, int]:
        """(start, end, event index) of one scored window, as an alert reports them."""
        return float(scored.start_ts[row]), float(scored.end_ts[row]), int(scored.event_index[row])

    def _resolve(
        self,
        slot: int,
        state: _KeyState,
        key: str,
        window: tuple[float, float, int],
        reason: ResolveReason,
    ) -> Alert:
        """The resolve alert of the slot's open episode, explained by its peak window (by
        nothing when no window exceeded: a new key's episode that stayed calm)."""
        features = (
            self._explain(
                self._peak_errors[slot], self._peak_actual[slot], self._peak_expected[slot]
            )
            if state.windows_over
            else ()
        )
        peak_threshold = float(self._peak_threshold[slot])
        return self._alert(
            "resolve", state, key, window, state.peak, peak_threshold, features,
            flat_feature_names(self._names, self._peak_flat[slot]), reason,
            float(self._anomaly_end[slot]),
        )

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
        self._peak_flat[slot] = scored.flat[row]

    def _alert(
        self,
        kind: AlertKind,
        state: _KeyState,
        key: str,
        window: tuple[float, float, int],
        score: float,
        threshold: float,
        features: tuple[FeatureContribution, ...],
        flat_features: tuple[str, ...],
        reason: ResolveReason | OpenReason | None = None,
        anomaly_end: float | None = None,
    ) -> Alert:
        episode_id = episode_id_for(key, state.episode_start, self._model_version)
        window_start, window_end, event_index = window
        alert = Alert(
            kind=kind,
            alert_id=alert_id_for(episode_id, kind),
            episode_id=episode_id,
            key=key,
            window_start=window_start,
            window_end=window_end,
            score=score,
            threshold=threshold,
            severity=severity_for(score, threshold),
            top_features=features,
            model_version=self._model_version,
            episode_start=state.episode_start,
            windows_over=state.windows_over,
            event_index=event_index,
            reason=reason,
            flat_features=flat_features,
            anomaly_end=anomaly_end,
        )
        log.debug(
            "episode " + ("opened" if kind == "open" else "resolved"),
            key=alert.key,
            episode_id=alert.episode_id,
            score=alert.score,
            windows_over=alert.windows_over,
            reason=reason,
        )
        return alert
