"""Per-key running mean and variance: each key is scaled by its own statistics, whatever its scale.

Keys differ by orders of magnitude in level and scale (CPU percent beside byte counts), and the
model was trained on windows normalised per key, so each key is normalised with its own
statistics and never with a pool of other keys': an optional prior (the training statistics as
``prior_weight`` pseudo-events, off by default) is the only thing shared, because a pooled scale
flattens every key much smaller than the pool into a line the model reconstructs perfectly.
The std floor is relative to the key's own level (``min_relative_std`` x |mean|) beside a tiny
absolute one, so a key at 1e-3 and a key at 1e7 are scaled alike.

A key learns freely during its warm-up (``clip_after`` events); after that a value more than
``clip_sigma`` of the key's std from its mean is an outlier: its deviation is clipped at that
bound before it moves the mean, and it leaves the variance as it is. A long anomaly, hundreds of
events away from normal, then moves the statistics only slowly instead of being absorbed until
it looks normal (and cannot widen the scale that defines it), while a lasting change of regime
is still learnt over time. The effective count is capped at ``horizon`` so that a key
whose level shifts for good is re-learned instead of being averaged away by its long past.

State is three arrays indexed by the window store's slot (count, mean, M2). Each window is
normalised with its key's statistics as they stood right after the window's last event, and the
events of a batch are folded in per key in order (`scan.rank_steps`), so a window's normalisation
does not depend on where the stream was cut into batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_detector.engine.scan import rank_steps
from stream_detector.engine.slots import SlotArrays, slot_fields

if TYPE_CHECKING:
    from torch import Tensor


def _merge(
    n_a: np.ndarray,
    mean_a: np.ndarray,
    m2_a: np.ndarray,
    n_b: np.ndarray,
    mean_b: np.ndarray,
    m2_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan et al.'s merge of two (count [K], mean [K,F], M2 [K,F]) summaries; 0+0 stays 0."""
    n = n_a + n_b
    share_b = np.divide(n_b, n, out=np.zeros_like(n), where=n > 0)[:, None]
    delta = mean_b - mean_a
    mean = mean_a + delta * share_b
    m2 = m2_a + m2_b + delta**2 * (n_a[:, None] * share_b)
    return n, mean, m2


class KeyNormalizer(SlotArrays):
    """Running per-slot statistics with a global prior; the window stage keeps it in step with
    the slots. A reset slot has no history: a key that takes it starts from the global stats."""

    SLOT_FIELDS = slot_fields("n", "mean", "m2")

    def __init__(
        self,
        n_features: int,
        global_mean: np.ndarray,
        global_std: np.ndarray,
        *,
        prior_weight: float,
        horizon: int,
        min_std: float,
        min_relative_std: float = 0.0,
        clip_sigma: float = 0.0,
        clip_after: int = 0,
        z_limit: float = 0.0,
        capacity: int = 1024,
    ) -> None:
        global_mean = np.asarray(global_mean, dtype=np.float64).reshape(-1)
        global_std = np.asarray(global_std, dtype=np.float64).reshape(-1)
        if global_mean.shape != (n_features,) or global_std.shape != (n_features,):
            raise ValueError(f"global_mean and global_std must have {n_features} values each")
        if prior_weight < 0 or horizon < 1 or not min_std > 0:
            raise ValueError("need prior_weight >= 0, horizon >= 1 and min_std > 0")
        if min_relative_std < 0 or clip_sigma < 0 or clip_after < 0 or z_limit < 0:
            raise ValueError("need min_relative_std, clip_sigma, clip_after and z_limit >= 0")
        self.n_features = n_features
        self.prior_weight = float(prior_weight)
        self.horizon = int(horizon)
        self.min_std = float(min_std)
        self.min_relative_std = float(min_relative_std)
        self.clip_sigma = float(clip_sigma)
        self.clip_after = int(clip_after)
        self.z_limit = float(z_limit)
        self._global_mean = global_mean
        self._global_var = global_std**2
        # float64: M2 of a long-lived key grows large, and float32 would lose its small updates.
        self._n = np.empty(0, dtype=np.float64)
        self._mean = np.empty((0, n_features), dtype=np.float64)
        self._m2 = np.empty((0, n_features), dtype=np.float64)
        self.ensure_capacity(capacity)

    def update(
        self,
        slots: np.ndarray,
        values: np.ndarray,
        record: np.ndarray | None = None,
        steps: list[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fold events (slot [N], values [N, F], arrival order) into their slots' statistics,
        one event at a time per slot, so any cut of a key's stream into batches gives the same
        statistics after each event.

        Once a slot holds ``clip_after`` events, outliers (beyond ``clip_sigma`` x the slot's
        own std) are tamed as `_robust` says (when clip_sigma > 0). Once a slot holds
        ``horizon`` events, each new one replaces 1/horizon of the past (the old summary's
        weight is shrunk, never its mean), so a level shift is re-learned.

        ``record``: positions among the N events after which the statistics are wanted (the
        last events of due windows); returns their (mean [R, F], std [R, F]) float32, with the
        prior pooled in as `stats` does (empty without ``record``). ``steps``: `rank_steps` of
        ``slots``, when the caller has them already.
        """
        values = np.asarray(values, dtype=np.float64)
        record = np.empty(0, dtype=np.int64) if record is None else record
        wanted = np.full(len(slots), -1, dtype=np.int64)
        wanted[record] = np.arange(len(record))
        seen_n = np.zeros(len(record), dtype=np.float64)
        seen_mean = np.zeros((len(record), self.n_features), dtype=np.float64)
        seen_m2 = np.zeros_like(seen_mean)
        for rows in rank_steps(slots) if steps is None else steps:
            slot = slots[rows]
            n_a = self._n[slot]
            kept_a = np.minimum(n_a, self.horizon - 1)
            scale_a = np.divide(kept_a, n_a, out=np.zeros_like(n_a), where=n_a > 0)
            n = kept_a + 1.0
            delta = values[rows] - self._mean[slot]
            spread = delta**2
            if self.clip_sigma > 0:
                delta, spread = self._robust(delta, spread, slot, n_a)
            self._mean[slot] += delta / n[:, None]
            self._m2[slot] = self._m2[slot] * scale_a[:, None] + spread * (kept_a / n)[:, None]
            self._n[slot] = n
            out = wanted[rows]
            hit = out >= 0
            if hit.any():
                at, there = out[hit], slot[hit]
                seen_n[at], seen_mean[at], seen_m2[at] = (
                    self._n[there], self._mean[there], self._m2[there]
                )
        return self._pooled(seen_n, seen_mean, seen_m2)

    def _robust(
        self, delta: np.ndarray, spread: np.ndarray, slot: np.ndarray, n_a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Deviations [R, F] and their variance contributions, with outliers tamed.

        For a warm slot, a feature more than clip_sigma of the slot's own (floored) std from its
        mean is an outlier: its deviation is clipped at that bound (the mean follows a lasting
        change, slowly) and it contributes the slot's current variance (it neither inflates the
        scale, which would widen the bound and let the next outliers in, nor shrinks it).
        """
        warm = n_a >= max(self.clip_after, 1)
        if not warm.any():
            return delta, spread
        var = np.divide(
            self._m2[slot], n_a[:, None], out=np.zeros_like(delta), where=(n_a > 0)[:, None]
        )
        limit = self.clip_sigma * self._floored(np.sqrt(var), self._mean[slot])
        outlier = warm[:, None] & (np.abs(delta) > limit)
        return (
            np.where(outlier, np.clip(delta, -limit, limit), delta),
            np.where(outlier, var, spread),
        )

    def _floored(self, std: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """std, at least min_std and min_relative_std x |mean| (scale-free for any key)."""
        return np.maximum(std, np.maximum(self.min_std, self.min_relative_std * np.abs(mean)))

    def stats(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean [B, F] and std [B, F] (float32) of the slots now, the prior pooled in."""
        return self._pooled(self._n[slots], self._mean[slots], self._m2[slots])

    def _pooled(
        self, own_n: np.ndarray, own_mean: np.ndarray, own_m2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (float32) of key summaries with the prior pooled in as pseudo-events.

        The pooling is Chan's merge, with the global statistics as a summary of
        ``prior_weight`` events, so the between-means spread counts towards the variance.
        """
        k = len(own_n)
        prior_n = np.full(k, self.prior_weight)
        n, mean, m2 = _merge(
            prior_n,
            np.broadcast_to(self._global_mean, (k, self.n_features)),
            self._global_var * prior_n[:, None],
            own_n,
            own_mean,
            own_m2,
        )
        # A key without events of its own gets the global variance exactly (even with no prior).
        var = np.divide(
            m2,
            n[:, None],
            out=np.tile(self._global_var, (k, 1)),
            where=(own_n > 0)[:, None],
        )
        std = self._floored(np.sqrt(var), mean)
        return mean.astype(np.float32), std.astype(np.float32)

    def normalize(
        self,
        windows: np.ndarray | Tensor,
        mean: np.ndarray,
        std: np.ndarray,
        upload: Callable[..., tuple[Any, ...]] = lambda *arrays: arrays,
    ) -> np.ndarray | Tensor:
        """(x - mean) / std of float32 windows [B, W, F] with per-window statistics [B, F],
        clipped to +-z_limit.

        The clip keeps a key whose warm-up was (nearly) constant, and so has a tiny std, from
        feeding the model values in the millions: such a window is as far out as the model's
        inputs go and scores high either way, and the training calibration is not blown up by
        the few training windows where it happens.

        The statistics are computed on the host and passed through ``upload`` to wherever the
        windows are (a torch tensor on the model's device in the device-resident engine), so
        the windows themselves never move.
        """
        mean, std = upload(mean, std)
        scaled = (windows - mean[:, None, :]) / std[:, None, :]
        if self.z_limit > 0:
            scaled = scaled.clip(-self.z_limit, self.z_limit)
        return scaled

    @staticmethod
    def denormalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """Back to raw units: x * std + mean for x [B, F] or [B, W, F], float32."""
        if x.ndim == 3:
            mean, std = mean[:, None, :], std[:, None, :]
        return (x * std + mean).astype(np.float32, copy=False)
