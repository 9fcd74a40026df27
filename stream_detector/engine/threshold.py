"""Adaptive per-key threshold on reconstruction scores.

Keys differ by orders of magnitude in how well the model reconstructs them, so one global cut-off
either floods alerts from noisy keys or misses anomalies on quiet ones. Each key therefore learns
its own band from its recent scores.

Why raw scores, not log scores: a key whose windows a model reconstructs almost perfectly at some
phase of its cycle has scores spanning decades (0.001 .. 0.2); in log space that low tail, which
says nothing about anomalies, dominates the variance and drives ``exp(mean + k std)`` up by orders
of magnitude, until real anomalies pass under it. In raw units the band tracks the upper part of
the distribution that matters, and the floor keeps near-perfect keys from alerting on noise.

Why batch granularity: within one `apply` call every score of a key is compared with the threshold
from the key's state before the call. The decisions then depend only on the batches, not on how the
scores inside a batch interleave, so a replay with the same batching reproduces the service exactly,
and the whole batch can be compared and absorbed with array operations.

Why exceeding scores are not absorbed: an anomaly lasting many windows would otherwise raise its
own threshold until it no longer counts as anomalous (baseline poisoning).
"""

from __future__ import annotations

import numpy as np

from stream_detector.config import ThresholdConfig
from stream_detector.state.slots import SlotArrays

def _grow(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros(capacity, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


class AdaptiveThreshold(SlotArrays):
    """EWMA mean and variance of each key's scores, in arrays indexed by ring-buffer slot.

    Until a key has absorbed `warmup` scores its estimate is too noisy to trust, and it is judged
    against the calibrated global threshold instead. Afterwards its threshold is
    ``mean + sensitivity * std``, floored at ``floor_factor x global_threshold``.
    """

    SLOT_FIELDS = ("mean", "var", "count")

    def __init__(
        self, config: ThresholdConfig, global_threshold: float, capacity: int = 1024
    ) -> None:
        self._alpha = float(config.alpha)
        self._sensitivity = float(config.sensitivity)
        self._warmup = int(config.warmup)
        self._warmup_threshold = float(global_threshold) * config.global_factor
        self._floor = float(global_threshold) * config.floor_factor
        self._mean = np.zeros(capacity, dtype=np.float64)
        self._var = np.zeros(capacity, dtype=np.float64)
        self._count = np.zeros(capacity, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return int(self._mean.shape[0])

    def ensure_capacity(self, capacity: int) -> None:
        """Grow to at least `capacity` slots, keeping every existing key's state."""
        if capacity <= self.capacity:
            return
        self._mean = _grow(self._mean, capacity)
        self._var = _grow(self._var, capacity)
        self._count = _grow(self._count, capacity)

    def reset(self, slots: np.ndarray) -> None:
        """Forget freed slots: a reused slot belongs to a new key that must warm up afresh."""
        slots = np.asarray(slots, dtype=np.int64)
        self._mean[slots] = 0.0
        self._var[slots] = 0.0
        self._count[slots] = 0

    def apply(self, slots: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Judge B scores (arrival order) against their keys' thresholds; learn from normal ones.

        Returns (thresholds float32 [B], exceed bool [B]). A NaN score never exceeds and is not
        absorbed, so one bad model output cannot corrupt a key's baseline forever.
        """
        slots = np.asarray(slots, dtype=np.int64)
        raw = np.asarray(scores, dtype=np.float64)
        thresholds = self._thresholds(slots)
        exceed = raw > thresholds
        absorb = ~exceed & np.isfinite(raw)
        if absorb.any():
            self._absorb(slots[absorb], raw[absorb])
        return thresholds.astype(np.float32), exceed

    def _thresholds(self, slots: np.ndarray) -> np.ndarray:
        count = self._count[slots]
        own = self._mean[slots] + self._sensitivity * np.sqrt(self._var[slots])
        own = np.maximum(own, self._floor)
        return np.where(count < self._warmup, self._warmup_threshold, own)

    def _absorb(self, slots: np.ndarray, x: np.ndarray) -> None:
        """Fold each key's scores, in order, into its EWMA state without a loop over scores.

        For m scores x_1..x_m of one key the sequential EWMA unrolls to
        ``mean' = (1-a)^m mean + sum_i a (1-a)^(m-i) x_i``; the same holds for the second moment
        E[x^2], and ``var = E[x^2] - mean^2`` is exactly the usual incremental EWMA variance
        ``var' = (1-a)(var + a (x - mean)^2)``. Only scores under the threshold are absorbed, so
        they are bounded and the subtraction loses nothing that matters in float64.
        """
        keys, inverse, m = np.unique(slots, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.cumsum(m) - m
        rank = np.empty_like(order)
        rank[order] = np.arange(order.shape[0]) - np.repeat(starts, m)
        decay = 1.0 - self._alpha
        weights = self._alpha * decay ** (m[inverse] - 1 - rank)

        # A key's first ever score becomes its prior (variance 0); folding that score in again
        # leaves the prior unchanged, so new and known keys share one formula.
        fresh = self._count[keys] == 0
        first = x[order[starts]]
        mean = np.where(fresh, first, self._mean[keys])
        second = np.where(fresh, first * first, self._var[keys] + self._mean[keys] ** 2)

        keep = decay ** m.astype(np.float64)
        new_mean = keep * mean + np.bincount(inverse, weights * x, minlength=keys.shape[0])
        new_second = keep * second + np.bincount(inverse, weights * x * x, minlength=keys.shape[0])
        self._mean[keys] = new_mean
        self._var[keys] = np.maximum(new_second - new_mean * new_mean, 0.0)
        self._count[keys] += m
