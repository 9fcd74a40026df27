"""The detector's state cut along input partitions: checkpoint, restore and drop per partition.

The detector keeps one pool of keys; Kafka hands out partitions. With keyed input (message key =
entity key, the normal case) every key lives in one partition, so remembering which keys each
partition fed is enough to snapshot a partition, move it to another instance and drop it here.
A key fed by several partitions is kept while any of them is owned.

A checkpoint is only ever restored when it was made by the running model and settings; anything
else is refused with a warning and that partition starts cold, while the service keeps running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog

from stream_detector.aggregate.streams import partition_stream
from stream_detector.config import Settings
from stream_detector.detector.facade import Detector
from stream_detector.detector.snapshot import (
    EngineSnapshot,
    SnapshotError,
    check_compatible,
    decode,
    encode,
    make_checkpoint,
    state_fingerprint,
)
from stream_detector.kafka.changelog import KafkaChangelogStore
from stream_detector.kafka.store import LocalDirStore, Partition, StateStore, StateStoreError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EncodedCheckpoints:
    """Checkpoint bytes of some partitions, and what they reflect, ready to be stored."""

    blobs: dict[Partition, bytes]
    offsets: dict[Partition, int]  # the next input offset each blob's state reflects
    keys: int
    started: float  # perf_counter() when encoding began, for the log line
    encode_s: float


class PartitionState:
    """Which keys each owned partition fed the detector, and their checkpoints in a store."""

    def __init__(self, detector: Detector, store: StateStore, fingerprint: str) -> None:
        self.detector = detector
        self.store = store
        self.fingerprint = fingerprint
        self._keys: dict[Partition, set[str]] = {}
        # Offset of the last checkpoint saved or restored per partition: an idle partition is
        # not written again. The writer thread updates it, hence the lock.
        self._saved: dict[Partition, int] = {}
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")

    def observe(
        self, partitions: Sequence[Partition], partition_ids: np.ndarray, keys: np.ndarray
    ) -> None:
        """Note the partition of each accepted event: `partition_ids[i]` indexes `partitions`
        for `keys[i]` (the consumed batch's own lookup, so topic names are not sorted again)."""
        if len(keys) == 0:
            return
        order = np.argsort(partition_ids, kind="stable")
        bounds = np.flatnonzero(np.diff(partition_ids[order])) + 1
        for rows in np.split(order, bounds):
            partition = partitions[int(partition_ids[rows[0]])]
            self._keys.setdefault(partition, set()).update(keys[rows].tolist())

    def checkpoint(self, positions: Mapping[Partition, int]) -> Future[int]:
        """Checkpoint each partition as of `positions` (the next offset to consume, all output
        before it acknowledged); the future gives how many partitions were written.

        The snapshot (a copy of the keys' rows) is taken now, on the caller's thread, so it
        reflects exactly `positions`; encoding and writing, the slow part, run on the writer
        thread while the caller goes on with the next batches. A failed write is logged and
        leaves the previous checkpoint in place.
        """
        return self._writer.submit(self._write, self._snapshot_moved(positions))

    def encode_now(self, positions: Mapping[Partition, int]) -> EncodedCheckpoints:
        """Snapshot and encode on the caller's thread, for a caller that writes the bytes itself
        (the service, inside a Kafka transaction); call `written` once they are committed."""
        return self._encode(self._snapshot_moved(positions))

    def written(self, encoded: EncodedCheckpoints) -> int:
        """`encoded` is durably stored: idle partitions need not be written again. Returns
        the number of partitions written."""
        if not encoded.blobs:
            return 0
        with self._lock:
            self._saved.update(encoded.offsets)
        log.info(
            "checkpoint written",
            partitions=sorted(f"{t}:{p}@{offset}" for (t, p), offset in encoded.offsets.items()),
            keys=encoded.keys,
            bytes=sum(len(b) for b in encoded.blobs.values()),
            encode_s=round(encoded.encode_s, 4),
            seconds=round(time.perf_counter() - encoded.started, 4),
        )
        return len(encoded.blobs)

    def _snapshot_moved(
        self, positions: Mapping[Partition, int]
    ) -> dict[Partition, tuple[int, EngineSnapshot]]:
        """Snapshots of the partitions whose position moved since their last checkpoint."""
        snapshots: dict[Partition, tuple[int, EngineSnapshot]] = {}
        with self._lock:
            saved = dict(self._saved)
        for partition, offset in positions.items():
            if saved.get(partition) == offset:
                continue
            snapshot = self.detector.snapshot(
                self._keys.get(partition, ()), stream=partition_stream(*partition)
            )
            # Evicted keys fall out of the partition's key set here, so it cannot grow forever.
            self._keys[partition] = set(snapshot.keys.tolist())
            snapshots[partition] = (offset, snapshot)
        return snapshots

    def _encode(self, snapshots: dict[Partition, tuple[int, EngineSnapshot]]) -> EncodedCheckpoints:
        started = time.perf_counter()
        blobs = {
            partition: encode(
                make_checkpoint(
                    snapshot,
                    model_version=self.detector.model_version,
                    fingerprint=self.fingerprint,
                    topic=partition[0],
                    partition=partition[1],
                    offset=offset,
                )
            )
            for partition, (offset, snapshot) in snapshots.items()
        }
        return EncodedCheckpoints(
            blobs=blobs,
            offsets={p: offset for p, (offset, _) in snapshots.items()},
            keys=sum(len(snapshot) for _, snapshot in snapshots.values()),
            started=started,
            encode_s=time.perf_counter() - started,
        )

    def _write(self, snapshots: dict[Partition, tuple[int, EngineSnapshot]]) -> int:
        if not snapshots:
            return 0
        encoded = self._encode(snapshots)
        try:
            self.store.save(encoded.blobs)
        except StateStoreError as exc:
            log.warning("checkpoint not written; the previous one stays in place", error=str(exc))
            return 0
        return self.written(encoded)

    def restore(self, partitions: Collection[Partition]) -> dict[Partition, int]:
        """Restore each partition that has a usable checkpoint; returns the offset to resume
        each restored partition from. Partitions without one start cold from the committed
        offset, as before this feature."""
        try:
            blobs = self.store.load(partitions)
        except StateStoreError as exc:
            log.warning("state store unreadable; partitions start cold", error=str(exc),
                        partitions=sorted(map(str, partitions)))
            return {}
        resume: dict[Partition, int] = {}
        for partition, data in blobs.items():
            offset = self._restore_one(partition, data)
            if offset is not None:
                resume[partition] = offset
        return resume

    def drop(self, partitions: Collection[Partition]) -> int:
        """Forget the partitions' keys (their new owner restores them); returns keys dropped."""
        gone: set[str] = set()
        for partition in partitions:
            gone |= self._keys.pop(partition, set())
            with self._lock:
                self._saved.pop(partition, None)
        if gone and self._keys:
            gone -= set().union(*self._keys.values())
        # Called even without keys: in aggregate mode the partitions' open buckets go too.
        dropped = self.detector.drop(gone, streams=[partition_stream(*p) for p in partitions])
        if dropped:
            log.info("partition state dropped", partitions=sorted(map(str, partitions)), keys=dropped)
        return dropped

    def close(self) -> None:
        """Finish the write in progress, then release the store's clients."""
        self._writer.shutdown(wait=True)
        self.store.close()

    def _restore_one(self, partition: Partition, data: bytes) -> int | None:
        started = time.perf_counter()
        try:
            checkpoint = decode(data)
            meta = checkpoint.meta
            if (meta.topic, meta.partition) != partition:
                raise SnapshotError(f"checkpoint is of {meta.topic}:{meta.partition}")
            check_compatible(meta, self.detector.model_version, self.fingerprint)
            restored = self.detector.restore(checkpoint.engine)
        except (SnapshotError, ValueError, IndexError, KeyError, TypeError) as exc:
            # A corrupted or hand-made checkpoint must cost a cold start, never the service.
            log.warning(
                "checkpoint refused; partition starts cold",
                topic=partition[0],
                partition=partition[1],
                reason=str(exc),
            )
            return None
        self._keys[partition] = set(checkpoint.engine.keys.tolist())
        with self._lock:
            self._saved[partition] = meta.offset
        log.info(
            "partition state restored",
            topic=partition[0],
            partition=partition[1],
            offset=meta.offset,
            keys=restored,
            age_s=round(time.time() - meta.created_at, 1),
            seconds=round(time.perf_counter() - started, 4),
        )
        return meta.offset


def open_partition_state(settings: Settings, detector: Detector) -> PartitionState | None:
    """The configured store around `detector`, or None for state.store = "none"."""
    state = settings.state
    store: StateStore
    if state.store == "none":
        return None
    if state.store == "kafka":
        store = KafkaChangelogStore(settings.kafka, state.changelog_topic)
    else:
        store = LocalDirStore(state.dir, settings.kafka.group_id)
    log.info("state store", store=state.store, interval_s=state.checkpoint_interval_s,
             location=state.changelog_topic if state.store == "kafka" else str(state.dir))
    return PartitionState(detector, store, state_fingerprint(settings))
