"""When the owned partitions' state is checkpointed, and committing what a checkpoint reflects.

With a state store, input offsets are committed only right after a checkpoint: a committed
offset ahead of a partition's checkpoint would, after a crash, leave the events in between in
neither, and a partition with no checkpoint yet would resume cold in mid-stream. And a
checkpoint is only taken once every output up to its offsets is acknowledged: a checkpoint
ahead of its output would lose those alerts on restore (docs/state.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from concurrent.futures import Future

import structlog

from stream_detector.kafka.delivery import DeliveryTracker, Partition
from stream_detector.kafka.output import Output
from stream_detector.kafka.ownership import Ownership
from stream_detector.kafka.partitions import PartitionState

log = structlog.get_logger(__name__)

# The positions a checkpoint reflects, and its write's future (how many partitions it wrote).
_Write = tuple[dict[Partition, int], Future[int]]


class CheckpointInterval:
    """Every state.checkpoint_interval_s, a checkpoint is due."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = time.monotonic()

    def due(self) -> bool:
        """Whether the interval has passed; if so, the next interval starts."""
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True


class BackgroundCheckpoints:
    """Checkpoints snapshotted on the loop, encoded and written on the state's writer thread
    while batches go on, one write at a time; `commit` gets each written checkpoint's offsets
    (at-least-once: the consumer commits them)."""

    def __init__(
        self,
        state: PartitionState,
        interval: CheckpointInterval,
        ownership: Ownership,
        output: Output,
        tracker: DeliveryTracker,
        commit: Callable[[dict[Partition, int]], None],
    ) -> None:
        self.state = state
        self.interval = interval
        self.ownership = ownership
        self.output = output
        self.tracker = tracker
        self._commit = commit
        self._writing: _Write | None = None

    def write_if_due(self) -> None:
        """Once a turn of the loop: commit the checkpoint written since the last turn, and
        start the next one when it is due (never while one is being written)."""
        if self._writing is not None:
            if not self._writing[1].done():
                return
            self.commit_written()
        if self.interval.due():
            self._writing = self._write(self.ownership.assigned)

    def commit_written(self) -> None:
        """Wait for the background checkpoint, then commit the offsets it reflects (also when
        the write failed: restores seek to their checkpoint's own offset, so a commit ahead of
        the previous checkpoint costs re-processing, while never committing would cost more)."""
        if self._writing is None:
            return
        (positions, written), self._writing = self._writing, None
        written.result()
        self._commit(positions)

    def write_now(self, partitions: Collection[Partition]) -> None:
        """Checkpoint and wait for the write (revoke, shutdown): the partitions leave next.
        The caller has drained the output just before, as far as it could."""
        self.commit_written()
        started = self._write(partitions, drain=False)
        if started is not None:
            started[1].result()

    def _write(self, partitions: Collection[Partition], *, drain: bool = True) -> _Write | None:
        """Start checkpointing the partitions at their positions, once every output up to
        there is acknowledged (draining first, unless `drain` is False). None when no
        checkpoint could be taken (output unacknowledged)."""
        if self.tracker.unsettled:
            if not (drain and self.output.drain()):
                log.warning("checkpoint skipped: output still unacknowledged",
                            unacknowledged=self.tracker.unsettled)
                return None
        positions = self.ownership.positions_of(partitions)
        return positions, self.state.checkpoint(positions)
