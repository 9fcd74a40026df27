"""Flat lines: a sensor that repeats one value for longer than its own history makes normal.

An autoencoder reconstructs a flat window almost perfectly, so a stuck sensor scores *lower*
than ordinary noise and no threshold on the reconstruction error can find it. The tracker looks
at the readings themselves instead: per key and feature, how long the current run of exactly
equal values is, and how long the longest run the key completed before it was. A run is flat
once it is ``factor`` times that longest run and at least ``min_run`` events (one window) long.

Judged against the key's own history, so a sensor that is naturally coarse (it repeats a value
for 30 readings at times) needs a run of 60 before it counts, and a noisy one (runs of 1) counts
after one window. A key that has never changed value is not judged at all (no completed run):
constant since it was first seen is not news. A run once found flat is not learnt as normal
when it ends, so a sensor that keeps getting stuck keeps being found; unless it stays flat for
``learn_after`` readings (as long as the key took to warm up): then it is the key's new normal,
no longer flat, and learnt when it ends. A metric that reads exactly one value every night is
found on its first night, for that long, and not on the next ones.

Events are folded in per key in arrival order (`scan.rank_steps`), so the flags of a window do
not depend on where the stream was cut into batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream_detector.engine.scan import rank_steps
from stream_detector.engine.slots import SlotArrays, SlotField


def flat_feature_names(names: Sequence[str], flat: np.ndarray) -> tuple[str, ...]:
    """The names of the features one window's flags (bool [F]) mark as in a flat line, in
    feature order: what alerts and replay lines report."""
    return tuple(name for name, is_flat in zip(names, flat.tolist(), strict=True) if is_flat)


class FlatLineTracker(SlotArrays):
    """Per-slot, per-feature run lengths of repeated values, in arrays indexed by slot.

    last:     the feature's latest value (NaN: none yet; NaN never equals anything)
    run:      length of the run of equal values ending at the latest event
    longest:  the longest run completed before the current one (runs found flat excluded,
              unless learnt)
    flagged:  whether the current run has been found flat
    learnt:   whether the current run stayed flat for `learn_after` readings: normal now
    """

    SLOT_FIELDS = (
        SlotField("last", float("nan")),
        SlotField("run"),
        SlotField("longest"),
        SlotField("flagged", False),
        SlotField("learnt", False),
    )

    def __init__(
        self,
        n_features: int,
        factor: float,
        min_run: int,
        learn_after: int,
        capacity: int = 1024,
    ) -> None:
        if factor <= 0 or min_run < 1 or learn_after < 1:
            raise ValueError("need factor > 0, min_run >= 1 and learn_after >= 1")
        self._factor = float(factor)
        self._min_run = int(min_run)
        self._learn_after = int(learn_after)
        self._last = np.empty((0, n_features), dtype=np.float64)
        self._run = np.empty((0, n_features), dtype=np.int64)
        self._longest = np.empty((0, n_features), dtype=np.int64)
        self._flagged = np.empty((0, n_features), dtype=bool)
        self._learnt = np.empty((0, n_features), dtype=bool)
        self.ensure_capacity(capacity)

    def update(
        self,
        slots: np.ndarray,
        values: np.ndarray,
        record: np.ndarray,
        steps: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Fold events (slot [N], values [N, F], arrival order) into their slots' runs; return,
        for the events at positions ``record`` (the last events of due windows), which of their
        features were in a flat run right after them (bool [R, F]). ``steps``: `rank_steps` of
        ``slots``, when the caller has them already."""
        values = np.asarray(values, dtype=np.float64)
        wanted = np.full(len(slots), -1, dtype=np.int64)
        wanted[record] = np.arange(len(record))
        flat = np.zeros((len(record), values.shape[1]), dtype=bool)
        for rows in rank_steps(slots) if steps is None else steps:
            slot = slots[rows]
            value = values[rows]
            same = value == self._last[slot]
            run = self._run[slot]
            flagged, learnt = self._flagged[slot], self._learnt[slot]
            ended = ~same & (~flagged | learnt)
            self._longest[slot] = np.where(
                ended, np.maximum(self._longest[slot], run), self._longest[slot]
            )
            run = np.where(same, run + 1, 1)
            longest = self._longest[slot]
            flat_from = np.maximum(self._factor * longest, self._min_run)
            # Flat for `learn_after` readings: the new normal.
            learnt = same & (learnt | (flagged & (run >= flat_from + self._learn_after)))
            self._learnt[slot] = learnt
            now_flat = ~learnt & (longest > 0) & (run >= flat_from)
            self._flagged[slot] = np.where(same, flagged | now_flat, now_flat)
            self._run[slot] = run
            self._last[slot] = value
            out = wanted[rows]
            hit = out >= 0
            if hit.any():
                flat[out[hit]] = now_flat[hit]
        return flat
