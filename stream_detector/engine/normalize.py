"""Per-key running mean and variance, shrunk towards the training statistics.

Keys differ in level and scale, and the model was trained on windows normalised per key, so each
key is normalised with its own statistics. A new key has none: its estimate starts at the global
(training) statistics, which act as ``prior_weight`` pseudo-events, and drifts to the key's own
as its events accumulate. The effective count is capped at ``horizon`` so that a key whose level
shifts is re-learned instead of being averaged away by its long past.

State is three arrays indexed by the window store's slot (count, mean, M2); a batch is merged per
slot with Chan's parallel-variance formula, so no Python loop touches events or keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from stream_detector.state.slots import SlotArrays

if TYPE_CHECKING:
    from torch import Tensor

log = structlog.get_logger(__name__)


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


def _sums(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group column sums of values [N, F]: one bincount per feature, several times faster
    than ``np.add.at`` and adding in the same (row) order, so the sums are the same bits."""
    return np.stack(
        [np.bincount(group, weights=column, minlength=n_groups) for column in values.T], axis=1
    )


class KeyNormalizer(SlotArrays):
    """Running per-slot statistics with a global prior; the detector keeps it in step with slots."""

    SLOT_FIELDS = ("n", "mean", "m2")

    def __init__(
        self,
        n_features: int,
        global_mean: np.ndarray,
        global_std: np.ndarray,
        *,
        prior_weight: float,
        horizon: int,
        min_std: float,
        capacity: int = 1024,
    ) -> None:
        global_mean = np.asarray(global_mean, dtype=np.float64).reshape(-1)
        global_std = np.asarray(global_std, dtype=np.float64).reshape(-1)
        if global_mean.shape != (n_features,) or global_std.shape != (n_features,):
            raise ValueError(f"global_mean and global_std must have {n_features} values each")
        if prior_weight < 0 or horizon < 1 or not min_std > 0:
            raise ValueError("need prior_weight >= 0, horizon >= 1 and min_std > 0")
        self.n_features = n_features
        self.prior_weight = float(prior_weight)
        self.horizon = int(horizon)
        self.min_std = float(min_std)
        self._global_mean = global_mean
        self._global_var = global_std**2
        # float64: M2 of a long-lived key grows large, and float32 would lose its small updates.
        self._n = np.zeros(capacity, dtype=np.float64)
        self._mean = np.zeros((capacity, n_features), dtype=np.float64)
        self._m2 = np.zeros((capacity, n_features), dtype=np.float64)

    @property
    def capacity(self) -> int:
        return int(self._n.shape[0])

    def ensure_capacity(self, capacity: int) -> None:
        """Grow to ``capacity`` slots (new ones empty); never shrinks."""
        old = self.capacity
        if capacity <= old:
            return
        n = np.zeros(capacity, dtype=np.float64)
        mean = np.zeros((capacity, self.n_features), dtype=np.float64)
        m2 = np.zeros_like(mean)
        n[:old], mean[:old], m2[:old] = self._n, self._mean, self._m2
        self._n, self._mean, self._m2 = n, mean, m2
        log.debug("normalizer grown", capacity=capacity, previous=old)

    def reset(self, slots: np.ndarray) -> None:
        """Forget the slots' history: a key that (re)takes a slot starts from the global stats."""
        self._n[slots] = 0.0
        self._mean[slots] = 0.0
        self._m2[slots] = 0.0

    def update(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Merge events (slot [N], values [N, F]) into their slots' running statistics."""
        if len(slots) == 0:
            return
        unique, inverse = np.unique(slots, return_inverse=True)
        inverse = inverse.reshape(-1)
        values = np.asarray(values, dtype=np.float64)
        n_b = np.bincount(inverse, minlength=len(unique)).astype(np.float64)
        mean_b = _sums(inverse, values, len(unique)) / n_b[:, None]
        # Two-pass: no cancellation.
        m2_b = _sums(inverse, (values - mean_b[inverse]) ** 2, len(unique))
        n_a = self._n[unique]
        # Cap the merged count at the horizon by shrinking the weights (never the means) of the
        # old summary first, and of the batch too when the batch alone exceeds the horizon.
        kept_b = np.minimum(n_b, self.horizon)
        kept_a = np.minimum(n_a, self.horizon - kept_b)
        scale_a = np.divide(kept_a, n_a, out=np.zeros_like(n_a), where=n_a > 0)
        n, mean, m2 = _merge(
            kept_a,
            self._mean[unique],
            self._m2[unique] * scale_a[:, None],
            kept_b,
            mean_b,
            m2_b * (kept_b / n_b)[:, None],
        )
        self._n[unique], self._mean[unique], self._m2[unique] = n, mean, m2

    def stats(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean [B, F] and std [B, F] (float32) of the slots, the prior pooled in as pseudo-events.

        The pooling is the same merge as a batch update, with the global statistics as a summary
        of ``prior_weight`` events, so the between-means spread counts towards the variance.
        """
        k = len(slots)
        own_n = self._n[slots]
        prior_n = np.full(k, self.prior_weight)
        n, mean, m2 = _merge(
            prior_n,
            np.broadcast_to(self._global_mean, (k, self.n_features)),
            self._global_var * prior_n[:, None],
            own_n,
            self._mean[slots],
            self._m2[slots],
        )
        # A key without events of its own gets the global variance exactly (even with no prior).
        var = np.divide(
            m2,
            n[:, None],
            out=np.tile(self._global_var, (k, 1)),
            where=(own_n > 0)[:, None],
        )
        std = np.maximum(np.sqrt(var), self.min_std)
        return mean.astype(np.float32), std.astype(np.float32)

    def normalize(
        self,
        windows: np.ndarray | Tensor,
        slots: np.ndarray,
        upload: Callable[..., tuple[Any, ...]] = lambda *arrays: arrays,
    ) -> np.ndarray | Tensor:
        """(x - mean) / std of float32 windows [B, W, F] with their slots' statistics, float32.

        The statistics are computed here on the host and passed through ``upload`` to wherever
        the windows are (a torch tensor on the model's device in the device-resident engine),
        so the windows themselves never move.
        """
        mean, std = upload(*self.stats(slots))
        return (windows - mean[:, None, :]) / std[:, None, :]

    def denormalize(self, x: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Back to raw units: x * std + mean for x [B, F] or [B, W, F], float32."""
        mean, std = self.stats(slots)
        if x.ndim == 3:
            mean, std = mean[:, None, :], std[:, None, :]
        return (x * std + mean).astype(np.float32, copy=False)
