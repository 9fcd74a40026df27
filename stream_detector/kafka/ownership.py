"""Which input partitions this group member owns, and how far it got in each.

The loop moves the positions, recovery adds and removes partitions, and the commit policy and
the checkpoints read both; one shared object keeps them from disagreeing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from stream_detector.kafka.delivery import Partition


@dataclass
class Ownership:
    """The owned partitions, and the next offset to consume of each as far as the detector has
    seen (what a checkpoint taken now reflects)."""

    assigned: set[Partition] = field(default_factory=set)
    positions: dict[Partition, int] = field(default_factory=dict)

    def positions_of(self, partitions: Collection[Partition]) -> dict[Partition, int]:
        """The positions of `partitions`; one that nothing was restored or consumed for yet
        has none."""
        return {p: o for p, o in self.positions.items() if p in partitions}

    def owned(self, offsets: Mapping[Partition, int]) -> dict[Partition, int]:
        """`offsets` without the partitions no longer owned: committing for those could
        overwrite their new owner's progress."""
        return {p: o for p, o in offsets.items() if p in self.assigned}
