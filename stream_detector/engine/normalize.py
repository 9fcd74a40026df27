"""Per-key running mean and variance, shrunk towards the training statistics.

Keys differ in level and scale, and the model was trained on windows normalised per key, so each
key is normalised with its own statistics. A new key has none: its estimate starts at the global
(training) statistics, which act as ``prior_weight`` pseudo-events, and drifts to the key's own
as its events accumulate. The effective count is capped at ``horizon`` so that a key whose level
shifts is re-learned instead of being averaged away by its long past.

State is three arrays indexed by the window store's slot (count, mean, M2). Each window is
normalised with its key's statistics as they stood right after the window's last event, and the
events of a batch are folded in per key in order (`scan.rank_steps`), so a window's normalisation
does not depend on where the stream was cut into batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from stream_detector.engine.scan import rank_steps
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

    def update(
        self, slots: np.ndarray, values: np.ndarray, record: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fold events (slot [N], values [N, F], arrival order) into their slots' statistics,
        one event at a time per slot, so any cut of a key's stream into batches gives the same
        statistics after each event.

        Once a slot holds ``horizon`` events, each new one replaces 1/horizon of the past (the
        old summary's weight is shrunk, never its mean), so a level shift is re-learned.

        ``record``: positions among the N events after which the statistics are wanted (the
        last events of due windows); returns their (mean [R, F], std [R, F]) float32, with the
        prior pooled in as `stats` does (empty without ``record``).
        """
        values = np.asarray(values, dtype=np.float64)
        record = np.empty(0, dtype=np.int64) if record is None else record
        wanted = np.full(len(slots), -1, dtype=np.int64)
        wanted[record] = np.arange(len(record))
        seen_n = np.zeros(len(record), dtype=np.float64)
        seen_mean = np.zeros((len(record), self.n_features), dtype=np.float64)
        seen_m2 = np.zeros_like(seen_mean)
        for rows in rank_steps(slots):
            slot = slots[rows]
            n_a = self._n[slot]
            kept_a = np.minimum(n_a, self.horizon - 1)
            scale_a = np.divide(kept_a, n_a, out=np.zeros_like(n_a), where=n_a > 0)
            n = kept_a + 1.0
            delta = values[rows] - self._mean[slot]
            self._mean[slot] += delta / n[:, None]
            self._m2[slot] = self._m2[slot] * scale_a[:, None] + delta**2 * (kept_a / n)[:, None]
            self._n[slot] = n
            out = wanted[rows]
            hit = out >= 0
            if hit.any():
                at, there = out[hit], slot[hit]
                seen_n[at], seen_mean[at], seen_m2[at] = (
                    self._n[there], self._mean[there], self._m2[there]
                )
        return self._pooled(seen_n, seen_mean, seen_m2)

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
        std = np.maximum(np.sqrt(var), self.min_std)
        return mean.astype(np.float32), std.astype(np.float32)

    @staticmethod
    def normalize(
        windows: np.ndarray | Tensor,
        mean: np.ndarray,
        std: np.ndarray,
        upload: Callable[..., tuple[Any, ...]] = lambda *arrays: arrays,
    ) -> np.ndarray | Tensor:
        """(x - mean) / std of float32 windows [B, W, F] with per-window statistics [B, F].

        The statistics are computed on the host and passed through ``upload`` to wherever the
        windows are (a torch tensor on the model's device in the device-resident engine), so
        the windows themselves never move.
        """
        mean, std = upload(mean, std)
        return (windows - mean[:, None, :]) / std[:, None, :]

    @staticmethod
    def denormalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """Back to raw units: x * std + mean for x [B, F] or [B, W, F], float32."""
        if x.ndim == 3:
            mean, std = mean[:, None, :], std[:, None, :]
        return (x * std + mean).astype(np.float32, copy=False)
