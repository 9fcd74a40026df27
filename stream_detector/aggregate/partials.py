"""Mergeable summaries of the events in (key, bucket) groups, one row per group.

Every aggregation is kept as a partial result whose merge is associative and commutative (counts
and sums add, minima and maxima and HyperLogLog registers take the element-wise extreme). That is
what lets a batch reduce its own events first and then fold them into the open buckets with one
array operation, and lets an out-of-order event join its bucket several batches later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Partials:
    """count float64 [G]; sums, mins, maxs float64 [G, Fn] (one column per numeric field);
    registers uint8 [G, Fd, m] (one HyperLogLog per distinct field). An empty group has count 0,
    sums 0, mins +inf, maxs -inf and all-zero registers: the identity of the merge."""

    count: np.ndarray
    sums: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    registers: np.ndarray

    def __len__(self) -> int:
        return int(self.count.shape[0])

    @staticmethod
    def empty(n: int, n_numeric: int, n_distinct: int, n_registers: int) -> Partials:
        return Partials(
            count=np.zeros(n),
            sums=np.zeros((n, n_numeric)),
            mins=np.full((n, n_numeric), np.inf),
            maxs=np.full((n, n_numeric), -np.inf),
            registers=np.zeros((n, n_distinct, n_registers), dtype=np.uint8),
        )

    @staticmethod
    def of_sorted_events(
        starts: np.ndarray,
        numbers: np.ndarray,
        register_index: np.ndarray,
        register_rank: np.ndarray,
        n_registers: int,
    ) -> Partials:
        """Reduce events already sorted by group; `starts` is the first row of each group.

        numbers float64 [N, Fn]; register_index int64 [N, Fd] and register_rank uint8 [N, Fd]
        (rank 0 where the event has no value for that field, which leaves the register as is).
        """
        sizes = np.diff(np.append(starts, numbers.shape[0]))
        n_distinct = register_index.shape[1]
        reduced = Partials.empty(len(starts), numbers.shape[1], n_distinct, n_registers)
        if len(starts) == 0:
            return reduced
        reduced.count[:] = sizes
        if numbers.shape[1]:
            reduced.sums[:] = np.add.reduceat(numbers, starts, axis=0)
            reduced.mins[:] = np.minimum.reduceat(numbers, starts, axis=0)
            reduced.maxs[:] = np.maximum.reduceat(numbers, starts, axis=0)
        group = np.repeat(np.arange(len(starts)), sizes)
        fields = np.arange(n_distinct)
        np.maximum.at(
            reduced.registers, (group[:, None], fields[None, :], register_index), register_rank
        )
        return reduced

    def take(self, rows: np.ndarray | slice) -> Partials:
        return Partials(
            self.count[rows],
            self.sums[rows],
            self.mins[rows],
            self.maxs[rows],
            self.registers[rows],
        )

    def merge_at(self, rows: np.ndarray, other: Partials) -> None:
        """Fold `other` into the distinct `rows` of this table, in place."""
        self.count[rows] += other.count
        self.sums[rows] += other.sums
        self.mins[rows] = np.minimum(self.mins[rows], other.mins)
        self.maxs[rows] = np.maximum(self.maxs[rows], other.maxs)
        self.registers[rows] = np.maximum(self.registers[rows], other.registers)

    def insert(self, positions: np.ndarray, other: Partials) -> Partials:
        """A new table with `other`'s rows inserted before `positions` (as np.insert)."""
        return Partials(
            *(
                np.insert(mine, positions, theirs, axis=0)
                for mine, theirs in (
                    (self.count, other.count),
                    (self.sums, other.sums),
                    (self.mins, other.mins),
                    (self.maxs, other.maxs),
                    (self.registers, other.registers),
                )
            )
        )
