"""Per-key trailing history laid out so a whole batch can be processed with array operations.

The baselines need, for every event of a batch, the few events of the same key that came before it
(possibly in earlier batches). Rather than loop per event, each batch is laid out as one flat array
in which every key's segment is its last `depth` rows of history followed by its events of this
batch, in arrival order; an event's predecessors are then the `depth` rows just before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """One batch laid out per key.

    flat:    float64 [n_keys_in_batch * depth + N, width]; NaN where a key had no history yet
    pos:     int64 [N]  row of each event (input order) in `flat`; `flat[pos - depth : pos]` are
             its predecessors
    ordinal: int64 [N]  1-based count of the key's events up to and including this one
    """

    flat: np.ndarray
    pos: np.ndarray
    ordinal: np.ndarray

    def trailing(self, rows: np.ndarray, length: int, column: int) -> np.ndarray:
        """[len(rows), length]: `column` over each given event's last `length` rows, itself last."""
        offsets = np.arange(1 - length, 1, dtype=np.int64)
        return self.flat[self.pos[rows][:, None] + offsets[None, :], column]


class KeyIds:
    """Dense integer ids for keys, looked up once per distinct key in a batch, never per event."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, keys: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
        known = self._ids
        of_unique = np.fromiter(
            (known.setdefault(key, len(known)) for key in unique), dtype=np.int64, count=len(unique)
        )
        return of_unique[inverse].reshape(-1)


class KeyedHistory:
    """The last `depth` rows (of `width` columns) seen per dense key id."""

    def __init__(self, depth: int, width: int) -> None:
        self.depth = depth
        self.width = width
        self._rows = np.full((0, depth, width), np.nan)
        self._seen = np.zeros(0, dtype=np.int64)

    def _ensure(self, n_keys: int) -> None:
        if n_keys <= len(self._seen):
            return
        grown = max(n_keys, 2 * len(self._seen))
        rows = np.full((grown, self.depth, self.width), np.nan)
        rows[: len(self._rows)] = self._rows
        seen = np.zeros(grown, dtype=np.int64)
        seen[: len(self._seen)] = self._seen
        self._rows, self._seen = rows, seen

    def extend(self, key_ids: np.ndarray, rows: np.ndarray) -> Layout:
        """Lay the batch out after each key's history, then remember its newest rows."""
        key_ids = np.asarray(key_ids, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.float64).reshape(len(key_ids), self.width)
        n = len(key_ids)
        if n:
            self._ensure(int(key_ids.max()) + 1)
        order = np.argsort(key_ids, kind="stable")
        unique, first, counts = np.unique(key_ids[order], return_index=True, return_counts=True)
        group = np.repeat(np.arange(len(unique)), counts)
        seg_start = first + np.arange(len(unique), dtype=np.int64) * self.depth
        depth_range = np.arange(self.depth, dtype=np.int64)

        flat = np.empty((len(unique) * self.depth + n, self.width))
        flat[seg_start[:, None] + depth_range[None, :]] = self._rows[unique]
        rank = np.arange(n, dtype=np.int64) - first[group]
        pos_sorted = seg_start[group] + self.depth + rank
        flat[pos_sorted] = rows[order]
        pos = np.empty(n, dtype=np.int64)
        pos[order] = pos_sorted
        ordinal = np.empty(n, dtype=np.int64)
        ordinal[order] = self._seen[unique][group] + rank + 1

        seg_end = seg_start + self.depth + counts
        self._rows[unique] = flat[seg_end[:, None] - self.depth + depth_range[None, :]]
        self._seen[unique] += counts
        return Layout(flat, pos, ordinal)
