"""Per-key sequential updates over a batch, vectorised across keys.

Running statistics, thresholds and the like must evolve exactly as if each key's rows arrived one
at a time, or the results would depend on where the stream was cut into batches. A batch holds
few rows per key and many keys, so the rows are visited by their rank within their key: step r
updates every key's r-th row at once, with array operations. The number of steps is the largest
number of rows any one key has in the batch, not the number of rows.
"""

from __future__ import annotations

import numpy as np


def rank_steps(slots: np.ndarray) -> list[np.ndarray]:
    """Row indices of ``slots`` grouped by rank within their slot: element r holds, for every
    slot with more than r rows, the position of its r-th row (input order kept within a slot).

    Each element names a slot at most once, so state can be read and written with fancy
    indexing in one step without collisions.
    """
    n = len(slots)
    if n == 0:
        return []
    order = np.argsort(slots, kind="stable")
    ordered = slots[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    rank = np.arange(n) - np.repeat(starts, np.diff(starts, append=n))
    by_rank = order[np.argsort(rank, kind="stable")]
    bounds = np.cumsum(np.bincount(rank))
    return np.split(by_rank, bounds[:-1])
