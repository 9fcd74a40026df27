"""How the service makes its progress durable: the commit policy, one per processing guarantee.

Input offsets are never committed ahead of the output they caused. `AtLeastOnce` commits them
through the consumer once that output is acknowledged (after every batch, or with a state store
right after each checkpoint). `Transactional` (kafka.processing_guarantee = "exactly_once") puts
each batch's output and input offsets, and a state checkpoint when one is due, in one Kafka
transaction. The policy is chosen once at start; nothing else in the service asks which
guarantee it runs under.
"""

from __future__ import annotations

from typing import Protocol

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_detector.config import Settings
from stream_detector.kafka.changelog import KafkaChangelogStore
from stream_detector.kafka.checkpoints import BackgroundCheckpoints, CheckpointInterval
from stream_detector.kafka.clients import Clients
from stream_detector.kafka.delivery import DeliveryTracker, OutRecord, Partition
from stream_detector.kafka.faults import ClientFaults, FatalServiceError
from stream_detector.kafka.output import Output
from stream_detector.kafka.ownership import Ownership
from stream_detector.kafka.partitions import EncodedCheckpoints, PartitionState
from stream_detector.kafka.settings import transactional_id
from stream_detector.kafka.telemetry import ServiceMetrics

log = structlog.get_logger(__name__)

_TXN_TIMEOUT_S = 30.0


class CommitPolicy(Protocol):
    """What the service loop and recovery ask of a processing guarantee."""

    @property
    def transactional_id(self) -> str | None:
        """The producer's transactional.id; None for a plain producer."""
        ...

    def start(self) -> None:
        """Prepare the producer, once it exists and before the consumer joins the group."""
        ...

    def open_batch(self, offsets: dict[Partition, int]) -> int:
        """Number a consumed batch that ends at `offsets`, for its output records."""
        ...

    def produce_batch(
        self, batch: int, records: list[OutRecord], offsets: dict[Partition, int]
    ) -> None:
        """Hand a batch's output (its records carry `batch`, from `open_batch`) to the
        producer; the transactional policy commits it with the batch's input `offsets`."""
        ...

    def between_batches(self) -> None:
        """Once a turn of the loop, with or without a batch: commit what became committable."""
        ...

    def hand_over(self, partitions: set[Partition]) -> None:
        """Before revoked partitions are given away (inside the rebalance callback): make
        their progress durable."""
        ...

    def finish(self) -> None:
        """At shutdown, the output drained as far as it could: make all progress durable."""
        ...

    def forget(self, partitions: set[Partition]) -> None:
        """The partitions are gone (revoked or lost): hold nothing more of theirs."""
        ...


def commit_policy(
    settings: Settings,
    *,
    clients: Clients,
    output: Output,
    tracker: DeliveryTracker,
    ownership: Ownership,
    state: PartitionState | None,
    metrics: ServiceMetrics,
    faults: ClientFaults,
) -> CommitPolicy:
    """The policy for settings.kafka.processing_guarantee."""
    interval = CheckpointInterval(settings.state.checkpoint_interval_s)
    if settings.kafka.processing_guarantee == "exactly_once":
        return Transactional(
            transactional_id(settings.kafka),
            clients=clients,
            output=output,
            ownership=ownership,
            state=state,
            interval=interval,
            metrics=metrics,
            faults=faults,
        )
    return AtLeastOnce(
        clients=clients,
        output=output,
        tracker=tracker,
        ownership=ownership,
        state=state,
        interval=interval,
        metrics=metrics,
    )


class AtLeastOnce:
    """Offsets committed by the consumer once every output they caused is acknowledged.

    The delivery tracker releases a batch's offsets when it and every earlier batch are fully
    acknowledged. Without a state store the released offsets are committed after every batch;
    with one, only the offsets of a written checkpoint are (see `checkpoints`), and what is
    released is committed when partitions leave."""

    transactional_id: str | None = None

    def __init__(
        self,
        *,
        clients: Clients,
        output: Output,
        tracker: DeliveryTracker,
        ownership: Ownership,
        state: PartitionState | None,
        interval: CheckpointInterval,
        metrics: ServiceMetrics,
    ) -> None:
        self.clients = clients
        self.output = output
        self.tracker = tracker
        self.ownership = ownership
        self.metrics = metrics
        # Offsets released by the tracker: what this member may commit, per owned partition.
        self._released: dict[Partition, int] = {}
        # The last offset committed per partition, so that a released offset left out of one
        # commit (a revoke commits only the revoked partitions) goes into the next.
        self._committed: dict[Partition, int] = {}
        self._checkpoints = (
            BackgroundCheckpoints(
                state, interval, ownership, output, tracker, commit=self._commit_checkpointed
            )
            if state is not None
            else None
        )

    def start(self) -> None:
        """A plain producer needs no preparation."""

    def open_batch(self, offsets: dict[Partition, int]) -> int:
        return self.tracker.open_batch(offsets)

    def produce_batch(
        self, batch: int, records: list[OutRecord], offsets: dict[Partition, int]
    ) -> None:
        for record in records:
            self.output.produce(record)
        self.tracker.seal(batch)  # the tracker may release the batch's offsets once acked

    def between_batches(self) -> None:
        if self._checkpoints is None:
            self._commit_released(asynchronous=True)
        else:
            self._checkpoints.write_if_due()

    def hand_over(self, partitions: set[Partition]) -> None:
        if self.clients.producer is None:
            return
        # 1. Every output produced so far acknowledged, as far as it can be in time.
        if not self.output.drain():
            log.warning("revoking with output unacknowledged; it will be processed again",
                        unacknowledged=self.tracker.unsettled)
        # 2. Their checkpoint at the positions reached (skipped if output is unacknowledged).
        self._checkpoint_now(partitions)
        # 3. Their released offsets: those of batches whose output is all acknowledged.
        self._commit_released(asynchronous=False, only=partitions)

    def finish(self) -> None:
        self._checkpoint_now(self.ownership.assigned)
        self._commit_released(asynchronous=False)  # every released offset, not only fresh ones

    def forget(self, partitions: set[Partition]) -> None:
        for partition in partitions:
            self._released.pop(partition, None)
            self._committed.pop(partition, None)

    def _checkpoint_now(self, partitions: set[Partition]) -> None:
        if self._checkpoints is not None:
            self._checkpoints.write_now(partitions)

    def _commit_checkpointed(self, positions: dict[Partition, int]) -> None:
        """Commit a written checkpoint's offsets, of the partitions still owned."""
        self._collect_released()  # their batches are acknowledged: let the tracker forget them
        self._commit(self.ownership.owned(positions), asynchronous=False)

    def _commit_released(self, *, asynchronous: bool, only: set[Partition] | None = None) -> None:
        """Commit what the tracker released: between batches the offsets not committed yet,
        when leaving every owned one (so a failed asynchronous commit earlier cannot leave a
        partition behind)."""
        if self.clients.consumer is None:
            return
        self._collect_released()
        if only is not None:
            chosen = {tp: o for tp, o in self._released.items() if tp in only}
        elif asynchronous:
            chosen = {tp: o for tp, o in self._released.items() if self._committed.get(tp) != o}
        else:
            chosen = self._released
        self._commit(chosen, asynchronous=asynchronous)

    def _collect_released(self) -> None:
        """Take the offsets the tracker released (fully acknowledged batches) of owned
        partitions into `_released`."""
        ready = {(tp.topic, tp.partition): tp.offset for tp in self.tracker.ready_offsets()}
        self._released.update(self.ownership.owned(ready))

    def _commit(self, chosen: dict[Partition, int], *, asynchronous: bool) -> None:
        consumer = self.clients.consumer
        if consumer is None or not chosen:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in chosen.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=asynchronous)
            self.metrics.commits.inc()
            self._committed.update(chosen)
        except KafkaException as exc:
            # The offsets stay released and are committed again at the next chance; if this
            # member is leaving, the new owner re-processes them (duplicates, never a loss).
            log.warning("offset commit failed", error=exc.args[0].str(), offsets=len(offsets))


class Transactional:
    """Each batch's output and input offsets in one Kafka transaction, and a checkpoint of the
    owned partitions in the transaction of the batch at hand when one is due.

    Checkpoints join the transactions through the changelog store (the settings refuse
    exactly_once with the local store, which cannot join a transaction). Restore reads the
    changelog read_committed, so it never sees a checkpoint whose output was not committed."""

    def __init__(
        self,
        transactional_id: str,
        *,
        clients: Clients,
        output: Output,
        ownership: Ownership,
        state: PartitionState | None,
        interval: CheckpointInterval,
        metrics: ServiceMetrics,
        faults: ClientFaults,
    ) -> None:
        self.transactional_id = transactional_id
        self.clients = clients
        self.output = output
        self.ownership = ownership
        self.state = state
        self.interval = interval
        self.metrics = metrics
        self.faults = faults
        store = state.store if state is not None else None
        self._changelog = store if isinstance(store, KafkaChangelogStore) else None

    def start(self) -> None:
        """Register the transactional id (fencing an older producer of it)."""
        try:
            self.clients.require_producer().init_transactions(_TXN_TIMEOUT_S)
        except KafkaException as exc:
            raise FatalServiceError(
                f"cannot start the transactional producer: {exc.args[0].str()}"
            ) from None

    def open_batch(self, offsets: dict[Partition, int]) -> int:
        """Unnumbered: the tracker need not release its offsets, its transaction commits them."""
        return -1

    def produce_batch(
        self, batch: int, records: list[OutRecord], offsets: dict[Partition, int]
    ) -> None:
        due = self._changelog is not None and self.interval.due()
        checkpoint = self._encode(self.ownership.assigned) if due else None
        self._commit_transaction(records, offsets, checkpoint)

    def between_batches(self) -> None:
        if self._changelog is not None and self.interval.due():
            # No batch took the checkpoint: a transaction of its own.
            self._checkpoint_transaction(self.ownership.assigned)

    def hand_over(self, partitions: set[Partition]) -> None:
        """Their checkpoint at exactly the offsets reached (every batch's transaction,
        offsets included, is committed already)."""
        try:
            self._checkpoint_transaction(partitions)
        except FatalServiceError as exc:
            # Raising inside the rebalance callback would lose it; the loop raises it.
            self.faults.note(str(exc))

    def finish(self) -> None:
        self._checkpoint_transaction(self.ownership.assigned)

    def forget(self, partitions: set[Partition]) -> None:
        """Nothing is held per partition: every batch's transaction committed its offsets."""

    def _commit_transaction(
        self,
        records: list[OutRecord],
        offsets: dict[Partition, int],
        checkpoint: EncodedCheckpoints | None,
    ) -> None:
        """One transaction: the output, the checkpoint and the input offsets, or none of them."""
        producer, consumer = self.clients.require_producer(), self.clients.require_consumer()
        try:
            # 1. Open the transaction.
            producer.begin_transaction()
            # 2. The batch's alerts and dead letters.
            for record in records:
                self.output.produce(record)
            # 3. The checkpoint's chunks, to the changelog.
            if checkpoint is not None and self._changelog is not None:
                self._changelog.produce(producer, checkpoint.blobs)
            # 4. The input offsets, as the consumer group's.
            if offsets:
                producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    consumer.consumer_group_metadata(),
                    _TXN_TIMEOUT_S,
                )
            # 5. Commit all of it (waits for every record of it to be acknowledged).
            producer.commit_transaction(_TXN_TIMEOUT_S)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.txn_requires_abort():
                producer.abort_transaction(_TXN_TIMEOUT_S)
            raise FatalServiceError(
                f"transaction failed ({error.str()}); nothing of this batch was committed, a "
                "restart processes it again from the last committed offsets"
            ) from None
        if offsets:
            self.metrics.commits.inc()
        if checkpoint is not None and self.state is not None:
            self.state.written(checkpoint)
        self.output.serve(0.0)

    def _checkpoint_transaction(self, partitions: set[Partition]) -> None:
        """A transaction holding only the checkpoint, when there is no batch to ride on (idle
        interval, revoke, shutdown). Every earlier batch's transaction, offsets included, is
        committed already, so it reflects committed output only."""
        if self._changelog is None:
            return
        encoded = self._encode(partitions)
        if encoded is not None:
            self._commit_transaction([], {}, encoded)

    def _encode(self, partitions: set[Partition]) -> EncodedCheckpoints | None:
        """The partitions' checkpoints at their positions, encoded here on the loop (for a
        transaction); None when none of them moved since its last checkpoint."""
        if self.state is None:
            return None
        encoded = self.state.encode_now(self.ownership.positions_of(partitions))
        return encoded if encoded.blobs else None
