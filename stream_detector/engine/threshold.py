"""Adaptive per-key threshold on reconstruction scores.

Keys differ by orders of magnitude in how well the model reconstructs them, so one global cut-off
either floods alerts from noisy keys or misses anomalies on quiet ones. Each key therefore learns
its own band from its recent scores.

Why raw scores, not log scores: a key whose windows a model reconstructs almost perfectly at some
phase of its cycle has scores spanning decades (0.001 .. 0.2); in log space that low tail, which
says nothing about anomalies, dominates the variance and drives ``exp(mean + k std)`` up by orders
of magnitude, until real anomalies pass under it. In raw units the band tracks the upper part of
the distribution that matters; scores are heavy-tailed, so the band is wide (sensitivity 8).

Why no floor from the global threshold by default: that threshold is set by the keys the model
reconstructs worst, and a floor derived from it silences every key that is quiet by nature
(``floor_factor`` remains, off).

Why one window at a time: each score is judged against the threshold learnt from exactly the key's
windows before it, so the decisions are a function of the key's own sequence of scores and never
of where the stream was cut into batches. A batch is stepped through by rank within key
(`scan.rank_steps`): every key's r-th window of the batch in one array operation.

Why exceeding scores are not absorbed: an anomaly lasting many windows would otherwise raise its
own threshold until it no longer counts as anomalous (baseline poisoning).

Why high scores are absorbed capped: the band is wide (scores are heavy-tailed squared errors),
so an anomaly whose scores ramp up (a port scan gathering pace) stays under it for its first
windows; absorbed whole, each of those widens the band, and the anomaly outruns its threshold to
the end. Once a key is warm, a score above ``mean + absorb_sigma x std`` is absorbed as that
bound: the band still follows a key whose scores grow for good, but one bad window moves it
little.
"""

from __future__ import annotations

import numpy as np

from stream_detector.config import ThresholdConfig
from stream_detector.engine.scan import rank_steps
from stream_detector.engine.slots import SlotArrays, slot_fields


class AdaptiveThreshold(SlotArrays):
    """Running mean and variance of each key's scores (EWMA once past 1/alpha scores), in
    arrays indexed by ring-buffer slot.

    Until a key has absorbed `warmup` scores its estimate is too noisy to trust, and it is judged
    against the calibrated global threshold instead. Afterwards its threshold is
    ``mean + sensitivity * std``, floored at ``floor_factor x global_threshold`` (0 by default).
    A reset slot belongs to a new key, which warms up afresh.
    """

    SLOT_FIELDS = slot_fields("mean", "var", "count")

    def __init__(
        self, config: ThresholdConfig, global_threshold: float, capacity: int = 1024
    ) -> None:
        self._alpha = float(config.alpha)
        self._sensitivity = float(config.sensitivity)
        self._warmup = int(config.warmup)
        self._absorb_sigma = float(config.absorb_sigma)
        self._warmup_threshold = float(global_threshold) * config.global_factor
        self._floor = float(global_threshold) * config.floor_factor
        self._mean = np.empty(0, dtype=np.float64)
        self._var = np.empty(0, dtype=np.float64)
        self._count = np.empty(0, dtype=np.int64)
        self.ensure_capacity(capacity)

    @property
    def warmup_threshold(self) -> float:
        """What judges a key until it has `warmup` scores of its own."""
        return self._warmup_threshold

    def apply(
        self,
        slots: np.ndarray,
        scores: np.ndarray,
        divisor: np.ndarray | None = None,
        floor: np.ndarray | None = None,
        learn: np.ndarray | None = None,
        warm: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Judge B scores (arrival order) against their keys' thresholds; learn from normal ones.

        Operator feedback comes in per window: the key's threshold is divided by `divisor`, then
        raised to at least `floor`, and a window whose `learn` is false is judged but not learnt;
        nor is one that only the floor keeps from exceeding.
        `warm`, when given (bool [B]), is set to whether each window was judged by its key's own
        threshold rather than the warm-up one.

        Returns (thresholds float32 [B], exceed bool [B]). A NaN score never exceeds and is not
        absorbed, so one bad model output cannot corrupt a key's baseline forever.
        """
        slots = np.asarray(slots, dtype=np.int64)
        raw = np.asarray(scores, dtype=np.float64)
        thresholds = np.empty(len(raw), dtype=np.float64)
        exceed = np.zeros(len(raw), dtype=bool)
        for rows in rank_steps(slots):
            slot, x = slots[rows], raw[rows]
            limit = self._thresholds(slot)
            if warm is not None:
                warm[rows] = self._count[slot] >= self._warmup
            if divisor is not None:
                limit = limit / divisor[rows]
            # A window over the key's own band that only a floor holds back is not learnt: it is
            # the pattern an operator called harmless, not the key's normal, and learning it
            # would widen the band until other anomalies of the key pass under it too.
            unusual = x > limit
            if floor is not None:
                limit = np.maximum(limit, floor[rows])
            thresholds[rows] = limit
            over = x > limit
            exceed[rows] = over
            absorb = ~unusual & np.isfinite(x)
            if learn is not None:
                absorb &= learn[rows]
            if absorb.any():
                self._absorb(slot[absorb], self._capped(slot[absorb], x[absorb]))
        return thresholds.astype(np.float32), exceed

    def _thresholds(self, slots: np.ndarray) -> np.ndarray:
        count = self._count[slots]
        own = self._mean[slots] + self._sensitivity * np.sqrt(self._var[slots])
        own = np.maximum(own, self._floor)
        return np.where(count < self._warmup, self._warmup_threshold, own)

    def _capped(self, slots: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Scores of warm slots capped at mean + absorb_sigma x std (when absorb_sigma > 0)."""
        if self._absorb_sigma <= 0:
            return x
        cap = self._mean[slots] + self._absorb_sigma * np.sqrt(self._var[slots])
        return np.where(self._count[slots] >= self._warmup, np.minimum(x, cap), x)

    def _absorb(self, slots: np.ndarray, x: np.ndarray) -> None:
        """Fold one score per slot (distinct slots) into its running mean and variance.

        The weight of the n-th score is ``max(alpha, 1/n)``: the plain mean and variance of the
        scores so far until there are 1/alpha of them, the EWMA after. A pure EWMA started at
        the first score would hold a variance biased low for its first ~1/alpha scores, and a
        key fresh out of warm-up would alert on ordinary noise. ``var' = (1-a)(var + a d^2)``
        is exact for both regimes (Welford's update when a = 1/n).
        """
        count = self._count[slots]
        weight = np.maximum(self._alpha, 1.0 / (count + 1.0))
        delta = x - self._mean[slots]
        self._mean[slots] += weight * delta
        self._var[slots] = (1.0 - weight) * (self._var[slots] + weight * delta * delta)
        self._count[slots] = count + 1
