"""Near-flat windows: a feature whose window varies far less than its key's windows ever did.

The flat-line rule (flat.py) finds a sensor that repeats one value exactly. A sensor stuck with a
little noise on it, or a signal that lost its swing (an oscillation that collapsed to a ripple),
repeats no value, yet the autoencoder reconstructs it just as well: a window of small deviations
is easy to reproduce, so it scores low, not high. The tracker therefore follows each key's
windows themselves: per feature, the spread (standard deviation, raw units) of every window, and
the smallest spread the key's windows had before. A window whose spread is under ``factor`` times
that smallest spread is near-flat once two windows in a row are (one is a lull).

Judged against the key's own history, so it is free of scale. Until the key has ``warmup``
windows its smallest spread is only being learnt: a key with a perfectly flat window (spread 0)
then is never judged near-flat, constant stretches being its normal. Low windows (under the
factor) are not learnt into it afterwards, unless a stretch of them lasts ``warmup`` windows: as
long as the key took to learn its normal, so it is the new normal, and the least spread of the
stretch is learnt (a metric that is quiet by night is found on its first quiet night, for that
long, and not after). A stretch of spread 0 is never learnt: that would end the rule for the
key, and an exact flat line is the flat-line rule's to judge (and learn, by its own measure).

Windows are folded in per key in arrival order (`scan.rank_steps` over the windows' slots), so
the flags do not depend on where the stream was cut into batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stream_detector.engine.scan import rank_steps
from stream_detector.engine.slots import SlotArrays, SlotField

# Near-flat windows in a row before a window counts: a single one is a lull.
IN_A_ROW = 2


def window_spread(windows: np.ndarray | Tensor) -> np.ndarray:
    """Each window's standard deviation per feature (float64 [B, F]) from raw values [B, W, F],
    computed where the windows are (a device tensor stays there until the [B, F] result).

    On the host in float32, as the ring holds the values: each window is first shifted by its
    last value (exact for nearby floats, and the spread does not change), so a key at 1e7 keeps
    the precision of one at 1; and over a copy with the window's steps last, which numpy
    reduces several times faster than the middle axis of [B, W, F].
    """
    if isinstance(windows, Tensor):  # the same arithmetic where the tensor is
        shifted = windows.to(torch.float32) - windows[:, -1:, :].to(torch.float32)
        return shifted.std(dim=1, unbiased=False).to(torch.float64).cpu().numpy()
    values = np.asarray(windows, dtype=np.float32)
    shifted = values - values[:, -1:, :]
    return np.ascontiguousarray(shifted.transpose(0, 2, 1)).std(axis=2).astype(np.float64)


class SpreadTracker(SlotArrays):
    """Per-slot window counts and, per feature, the smallest window spread and the current run
    of near-flat windows, in arrays indexed by slot.

    windows:  windows the key had
    least:    the smallest spread of its windows (low ones excluded once it is warm, until a
              stretch of them lasts `warmup` windows)
    run:      low windows in a row up to the latest one (0 again once learnt)
    stretch:  the smallest spread of those low windows, what is learnt if they last
    """

    SLOT_FIELDS = (
        SlotField("windows"),
        SlotField("least", float("inf")),
        SlotField("run"),
        SlotField("stretch", float("inf")),
    )

    def __init__(
        self, n_features: int, factor: float, warmup: int, capacity: int = 1024
    ) -> None:
        if not 0 < factor < 1 or warmup < 1:
            raise ValueError("need 0 < factor < 1 and warmup >= 1")
        self._factor = float(factor)
        self._warmup = int(warmup)
        # A stretch is learnt no sooner than it is found.
        self._lasting = max(self._warmup, IN_A_ROW)
        self._windows = np.empty(0, dtype=np.int64)
        self._least = np.empty((0, n_features), dtype=np.float64)
        self._run = np.empty((0, n_features), dtype=np.int64)
        self._stretch = np.empty((0, n_features), dtype=np.float64)
        self.ensure_capacity(capacity)

    def update(self, slots: np.ndarray, spread: np.ndarray) -> np.ndarray:
        """Fold windows (slot [B], `window_spread` [B, F], arrival order) into their slots'
        history; return which of their features are near-flat (bool [B, F])."""
        near_flat = np.zeros(spread.shape, dtype=bool)
        for rows in rank_steps(slots):
            slot = slots[rows]
            value = spread[rows]
            least = self._least[slot]
            warm = (self._windows[slot] >= self._warmup)[:, None]
            low = warm & (value < self._factor * least)
            run = np.where(low, self._run[slot] + 1, 0)
            stretch = np.where(low, np.minimum(self._stretch[slot], value), np.inf)
            near_flat[rows] = run >= IN_A_ROW
            # The new normal: learnt, and judged afresh (never a spread of 0, see above).
            lasting = (run >= self._lasting) & (stretch > 0)
            learnt = np.where(lasting, stretch, value)
            self._least[slot] = np.where(low & ~lasting, least, np.minimum(least, learnt))
            self._run[slot] = np.where(lasting, 0, run)
            self._stretch[slot] = np.where(lasting, np.inf, stretch)
            self._windows[slot] += 1
        return near_flat
