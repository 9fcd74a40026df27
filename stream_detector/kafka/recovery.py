"""Partitions coming and going: restore their state on assign, give them up on revoke or loss.

A restored partition is consumed from its checkpoint's offset, so state and position agree.
Revoked partitions' progress is made durable first (by the commit policy); lost partitions
already belong to someone else, so nothing is committed for them.
"""

from __future__ import annotations

import structlog
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Consumer, Message, TopicPartition

from stream_detector.config import KafkaConfig
from stream_detector.kafka.commit import CommitPolicy
from stream_detector.kafka.delivery import DeliveryTracker, Partition
from stream_detector.kafka.faults import ClientFaults
from stream_detector.kafka.health import HealthState
from stream_detector.kafka.ownership import Ownership
from stream_detector.kafka.partitions import PartitionState
from stream_detector.kafka.telemetry import ServiceMetrics

log = structlog.get_logger(__name__)


class Recovery:
    """The consumer's rebalance callbacks, and the check of restored positions."""

    def __init__(
        self,
        kafka: KafkaConfig,
        *,
        state: PartitionState | None,
        ownership: Ownership,
        policy: CommitPolicy,
        tracker: DeliveryTracker,
        metrics: ServiceMetrics,
        health: HealthState,
        faults: ClientFaults,
    ) -> None:
        self.kafka = kafka
        self.state = state
        self.ownership = ownership
        self.policy = policy
        self.tracker = tracker
        self.metrics = metrics
        self.health = health
        self.faults = faults
        # Restored partitions' checkpoint offsets, until a fetch response's high watermark shows
        # the offset lies within the log.
        self._unverified: dict[Partition, int] = {}

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        added = {(tp.topic, tp.partition) for tp in partitions}
        self.ownership.assigned |= added
        self.health.assigned = bool(self.ownership.assigned)
        log.info("partitions assigned", added=sorted(added), assigned=len(self.ownership.assigned))
        if self.state is not None:
            self._restore(self.state, consumer, partitions)

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before giving partitions away: get their output acknowledged and their offsets in."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if not self.faults.failing:
            self.policy.hand_over(revoked)
        self._give_up(revoked)
        log.info("partitions revoked", revoked=sorted(revoked),
                 assigned=len(self.ownership.assigned))

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost partitions already belong to someone else: committing for them would be wrong."""
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._give_up(lost)
        log.warning("partitions lost; their uncommitted input will be processed again by the new "
                    "owner", lost=sorted(lost))

    def check_restored_positions(
        self, consumer: Consumer, messages: list[Message]
    ) -> list[Message]:
        """A checkpoint's offset past the end of its partition (the broker lost its data, or the
        topic was deleted and re-created) would leave the partition waiting silently for
        offsets that may never come. Once a fetch response gave a restored partition's high
        watermark (list-offsets is not used: some brokers answer it wrongly), a position beyond
        it drops the partition's restored state and reads it from the beginning, cold. Returns
        `messages` without those partitions' (they are fetched again from the start)."""
        if not self._unverified:
            return messages
        beyond: set[Partition] = set()
        for partition, offset in list(self._unverified.items()):
            _low, high = consumer.get_watermark_offsets(TopicPartition(*partition), cached=True)
            if high < 0:
                continue  # no fetch response for it yet
            del self._unverified[partition]
            if offset > high:
                beyond.add(partition)
                log.warning(
                    "checkpoint offset is past the end of its partition; dropping its state and "
                    "reading the partition from the beginning",
                    topic=partition[0],
                    partition=partition[1],
                    checkpoint_offset=offset,
                    log_end=high,
                    probably="the broker lost the partition's data, or the topic was deleted and "
                    "re-created, after the checkpoint was written",
                )
        if not beyond:
            return messages
        if self.state is not None:
            self.state.drop(beyond)
        for topic, number in beyond:
            self.ownership.positions.pop((topic, number), None)
            consumer.seek(TopicPartition(topic, number, OFFSET_BEGINNING))
        # Rare (a broken log); a per-message filter is fine here.
        return [m for m in messages if (m.topic(), m.partition()) not in beyond]

    def _restore(
        self, state: PartitionState, consumer: Consumer, partitions: list[TopicPartition]
    ) -> None:
        """Restore the partitions' checkpoints and start consuming each restored one at its
        checkpoint's offset, so state and position agree: no event counted twice into a window,
        none skipped. The others start at their committed offset (OFFSET_INVALID)."""
        resume = state.restore({(tp.topic, tp.partition) for tp in partitions})
        if not resume:
            return  # the client assigns at the committed offsets once this callback returns
        positioned = [
            TopicPartition(
                tp.topic, tp.partition, resume.get((tp.topic, tp.partition), OFFSET_INVALID)
            )
            for tp in partitions
        ]
        if "cooperative" in self.kafka.partition_assignment_strategy:
            consumer.incremental_assign(positioned)
        else:
            consumer.assign(positioned)
        self.ownership.positions.update(resume)
        self._unverified.update(resume)

    def _give_up(self, partitions: set[Partition]) -> None:
        # With a state store the partitions' keys are dropped (the new owner restores them);
        # without one they age out through window.idle_ttl_s and window.max_keys.
        self.tracker.forget(partitions)
        if self.state is not None:
            self.state.drop(partitions)
        self.policy.forget(partitions)
        for partition in partitions:
            self.ownership.positions.pop(partition, None)
            self._unverified.pop(partition, None)
            self.metrics.drop_partition(*partition)
        self.ownership.assigned -= partitions
        self.health.assigned = bool(self.ownership.assigned)
