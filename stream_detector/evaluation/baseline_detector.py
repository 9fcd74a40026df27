"""Baselines behind the engine's own alerting rules, so only the scoring differs in a comparison.

A baseline scores every event; the LSTM scores a window of W events every `stride` events. For a
like-for-like comparison each baseline is put on the engine's cadence: its window score, due
exactly when the engine scores one (a key's c-th event with c >= W, (c - W) % stride == 0 and
c >= normalize.warmup), is the highest per-event score among the window's W events (its newest
`window.score_steps` when that is set, as the LSTM's score then judges only those). A spike thus
keeps a baseline's windows exceeding for as many windows as it stays inside what the LSTM's score
judges, and `min_consecutive` / `cooldown` mean the same for both. Window scores then go through
the engine's AdaptiveThreshold and EpisodeTracker, with a global threshold calibrated like the
model's: the `train.calibration_quantile` of the window scores over the presumed-normal training
data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from stream_detector.config import Settings
from stream_detector.engine.alerts import Alert
from stream_detector.engine.episodes import EpisodeTracker
from stream_detector.engine.threshold import AdaptiveThreshold
from stream_detector.engine.types import Decoded, ScoredWindows
from stream_detector.evaluation.baselines import EventScorer
from stream_detector.evaluation.history import KeyedHistory, KeyIds


@dataclass(frozen=True)
class WindowScores:
    """Baseline windows due in one batch; `rows` index the batch, in arrival order."""

    rows: np.ndarray
    key_ids: np.ndarray
    scores: np.ndarray
    start_ts: np.ndarray


class WindowedScorer:
    """A per-event scorer read out on the window store's cadence as max-over-window scores, the
    max over the window's newest `scored` events (all `window` of them by default)."""

    def __init__(
        self, scorer: EventScorer, window: int, stride: int, warmup: int = 0, scored: int = 0
    ) -> None:
        self.scorer = scorer
        self.window = window
        self.stride = stride
        self.warmup = warmup
        self.scored = scored or window
        self.key_ids = KeyIds()
        # Columns: per-event score, event time (for the window's start time).
        self._history = KeyedHistory(window - 1, 2)

    def windows(self, decoded: Decoded) -> WindowScores:
        batch = decoded.batch
        ids = self.key_ids.ids(batch.keys)
        scores = self.scorer.score(ids, batch.values)
        layout = self._history.extend(ids, np.column_stack([scores, batch.ts]))
        ordinal = layout.ordinal
        on_stride = (ordinal - self.window) % self.stride == 0
        due = (ordinal >= max(self.window, self.warmup)) & on_stride
        rows = np.flatnonzero(due)
        # fmax ignores the NaN of events scored before their scorer had enough history.
        window_scores = np.fmax.reduce(layout.trailing(rows, self.scored, 0), axis=1)
        start_ts = layout.trailing(rows, self.window, 1)[:, 0]
        return WindowScores(rows, ids[rows], window_scores, start_ts)


def _windowed(scorer: EventScorer, settings: Settings) -> WindowedScorer:
    window = settings.window
    return WindowedScorer(
        scorer, window.size, window.stride, settings.normalize.warmup, window.score_steps
    )


def calibrate(
    make_scorer: Callable[[], EventScorer], batches: Iterable[Decoded], settings: Settings
) -> float:
    """Global threshold of a fresh scorer over training data, chosen as training chooses ours."""
    windowed = _windowed(make_scorer(), settings)
    collected = [windowed.windows(decoded).scores for decoded in batches if len(decoded.batch)]
    scores = np.concatenate(collected) if collected else np.empty(0)
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        raise ValueError("no baseline window could be scored on the training data")
    return float(np.quantile(scores, settings.train.calibration_quantile))


class BaselineDetector:
    """A baseline scorer with the engine's threshold and episode logic; mirrors Detector.process."""

    def __init__(
        self, scorer: EventScorer, settings: Settings, global_threshold: float
    ) -> None:
        self.name = scorer.name
        self.global_threshold = global_threshold
        self._windowed = _windowed(scorer, settings)
        self._threshold = AdaptiveThreshold(settings.threshold, global_threshold)
        self._episodes = EpisodeTracker(
            settings.episodes, settings.input.value_fields, model_version=scorer.name
        )
        self._n_features = len(settings.input.value_fields)

    def process(self, decoded: Decoded) -> tuple[ScoredWindows, list[Alert]]:
        batch = decoded.batch
        due = self._windowed.windows(decoded)
        capacity = len(self._windowed.key_ids)
        self._threshold.ensure_capacity(capacity)
        self._episodes.ensure_capacity(capacity)
        thresholds, exceed = self._threshold.apply(due.key_ids, due.scores)
        n = len(due.rows)
        scored = ScoredWindows(
            slots=due.key_ids,
            keys=batch.keys[due.rows],
            event_index=due.rows.astype(np.int64),
            start_ts=due.start_ts,
            end_ts=batch.ts[due.rows],
            scores=due.scores.astype(np.float32),
            thresholds=thresholds,
            exceed=exceed,
            # A baseline reconstructs nothing: no per-feature error and no expected value.
            feature_errors=np.zeros((n, self._n_features), dtype=np.float32),
            actual=batch.values[due.rows],
            expected=np.full((n, self._n_features), np.nan, dtype=np.float32),
            flat=np.zeros((n, self._n_features), dtype=bool),
        )
        return scored, self._episodes.update(scored)
