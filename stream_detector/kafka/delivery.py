"""Which input offsets may be committed, given which produced messages the broker acknowledged.

At-least-once means an input offset is committed only once every alert and dead letter caused by
the events up to it is acknowledged. Batches are numbered in consumption order; a batch's offsets
become committable when it and every earlier batch have no unacknowledged message left, so a slow
acknowledgement for batch 3 holds back batch 4's offsets even if batch 4 was acknowledged first.

A delivery error is never dropped: errors that may heal (timeouts, a topic that is briefly
unknown while a broker restarts) are queued for re-production, up to a bound; anything else, or
running out of attempts, marks the tracker failed and the service stops without committing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaError, Message, TopicPartition

log = structlog.get_logger(__name__)

MAX_DELIVERY_ATTEMPTS = 5

# Errors librdkafka hands back once its own retries gave up but which can still heal with time.
_HEALABLE = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    }
)

Partition = tuple[str, int]


class DeliveryFailed(Exception):
    """A produced message could not be delivered; its input offsets must not be committed."""


@dataclass(slots=True)
class OutRecord:
    """One message to produce (an alert or a dead letter), kept until acknowledged so that a
    failed delivery can be produced again."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes | None]] | None = None
    batch: int = -1
    attempt: int = 0


@dataclass(slots=True)
class _Batch:
    seq: int
    offsets: dict[Partition, int]
    pending: int = 0
    sealed: bool = False


@dataclass
class DeliveryTracker:
    """Counts unacknowledged messages per consumed batch and releases offsets in batch order."""

    _batches: deque[_Batch] = field(default_factory=deque)
    _by_seq: dict[int, _Batch] = field(default_factory=dict)
    _next_seq: int = 0
    _retries: list[OutRecord] = field(default_factory=list)
    _failure: str | None = None
    in_flight: int = 0
    delivered: int = 0
    retried: int = 0

    def open_batch(self, offsets: dict[Partition, int]) -> int:
        """Start tracking a consumed batch; `offsets` are the next offsets to commit per partition."""
        batch = _Batch(self._next_seq, dict(offsets))
        self._next_seq += 1
        self._batches.append(batch)
        self._by_seq[batch.seq] = batch
        return batch.seq

    def callback_for(self, record: OutRecord) -> Callable[[KafkaError | None, Message], None]:
        """The producer's on_delivery callback for `record`; call `sent` once produce() accepted it
        (callbacks only fire inside poll/flush on this thread, so never before that)."""

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            self._on_delivery(record, error)

        return on_delivery

    def sent(self, record: OutRecord) -> None:
        """`record` is in the producer's queue: count it against its batch until acknowledged."""
        batch = self._by_seq.get(record.batch)
        if batch is not None and record.attempt == 0:
            batch.pending += 1
        self.in_flight += 1

    def seal(self, seq: int) -> None:
        """Everything batch `seq` will produce has been handed to the producer."""
        batch = self._by_seq.get(seq)
        if batch is not None:
            batch.sealed = True

    def take_retries(self) -> list[OutRecord]:
        """Records whose delivery failed with a healable error, to be produced again."""
        retries, self._retries = self._retries, []
        return retries

    def raise_if_failed(self) -> None:
        if self._failure is not None:
            raise DeliveryFailed(self._failure)

    @property
    def unsettled(self) -> int:
        """Messages not yet acknowledged, including those waiting to be produced again."""
        return self.in_flight + len(self._retries)

    def ready_offsets(self) -> list[TopicPartition]:
        """Offsets of the longest fully acknowledged prefix of batches, now safe to commit."""
        ready: dict[Partition, int] = {}
        while self._batches and self._batches[0].sealed and self._batches[0].pending == 0:
            batch = self._batches.popleft()
            del self._by_seq[batch.seq]
            ready.update(batch.offsets)
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in ready.items()]

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop offsets of partitions this consumer no longer owns: committing them later could
        overwrite the progress of their new owner."""
        gone = set(partitions)
        for batch in self._batches:
            for partition in gone & batch.offsets.keys():
                del batch.offsets[partition]

    def _on_delivery(self, record: OutRecord, error: KafkaError | None) -> None:
        self.in_flight -= 1
        if error is None:
            self.delivered += 1
            batch = self._by_seq.get(record.batch)
            if batch is not None:
                batch.pending -= 1
            return
        record.attempt += 1
        if error.code() in _HEALABLE and record.attempt < MAX_DELIVERY_ATTEMPTS:
            self.retried += 1
            log.warning(
                "delivery failed; producing again",
                topic=record.topic,
                error=error.str(),
                attempt=record.attempt,
            )
            self._retries.append(record)
            return
        if self._failure is None:
            self._failure = (
                f"could not deliver to topic {record.topic!r} after {record.attempt} attempt(s): "
                f"{error.str()}"
            )
        log.error("delivery failed for good", topic=record.topic, error=error.str())
