"""Operator feedback from kafka.feedback_topic into the detector's ledger, on every replica.

Every replica reads the whole topic from its beginning, assigned rather than in a consumer group
(each needs every event, not a share of them), so all replicas build the same ledger and a
restarted or rebalanced one has all of it again before it scores its first batch: the feedback
needs no place in the partition checkpoints. Between batches the reader takes what has arrived
since, without waiting.

A feedback record that cannot be applied is kept with its reason until this process has
dead-lettered it. One replica dead-letters: the owner of partition 0 of the first input topic,
with its next input batch, so the dead letter is committed like any other output. A replica
that gains that partition dead-letters what it has not yet, so a bad event reaches the
dead-letter topic at least once (its headers name its feedback topic, partition and offset).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from stream_detector.config import KafkaConfig
from stream_detector.detector.feedback import (
    FeedbackError,
    FeedbackLedger,
    parse_feedback,
)
from stream_detector.engine.types import Reject
from stream_detector.kafka.clients import create_client
from stream_detector.kafka.delivery import OutRecord
from stream_detector.kafka.faults import FatalServiceError
from stream_detector.kafka.records import dead_letter_record
from stream_detector.kafka.settings import reader_config
from stream_detector.kafka.telemetry import ServiceMetrics

log = structlog.get_logger(__name__)

BAD_FEEDBACK: Final = "bad_feedback"
# How long the start waits to read the feedback topic to its end before serving without the rest.
CATCH_UP_TIMEOUT_S: Final = 60.0
# Bad feedback kept for dead-lettering; beyond this the oldest are only counted and logged.
_MAX_PENDING: Final = 10_000
_READ_BATCH: Final = 1000


@dataclass(frozen=True)
class _Rejected:
    message: Message
    reason: str


class FeedbackReader:
    """Reads the feedback topic into `ledger`; not thread-safe (the service loop calls it)."""

    def __init__(self, kafka: KafkaConfig, ledger: FeedbackLedger, metrics: ServiceMetrics) -> None:
        if kafka.feedback_topic is None:
            raise ValueError("no kafka.feedback_topic to read")
        self.kafka = kafka
        self.topic: str = kafka.feedback_topic
        self.ledger = ledger
        self.metrics = metrics
        self._consumer: Consumer | None = None
        self._pending: deque[_Rejected] = deque(maxlen=_MAX_PENDING)

    def start(self, stop: threading.Event) -> None:
        """Assign every partition of the topic from its beginning, and read up to its end (or
        CATCH_UP_TIMEOUT_S) so that the first batch is judged with the feedback given so far."""
        conf = reader_config(self.kafka, "feedback")
        consumer = self._consumer = create_client(Consumer, conf)
        try:
            metadata = consumer.list_topics(self.topic, timeout=10.0).topics[self.topic]
        except KafkaException as exc:
            raise FatalServiceError(
                f"cannot read kafka.feedback_topic {self.topic!r}: {exc}"
            ) from None
        partitions = sorted(metadata.partitions)
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while len(at_end) < len(partitions) and not stop.is_set():
            if time.monotonic() > deadline:
                log.warning(
                    "feedback topic not read to its end at start; serving on, the rest is "
                    "applied as it arrives",
                    topic=self.topic,
                    applied=len(self.ledger),
                )
                break
            at_end |= self._take(consumer.consume(_READ_BATCH, 0.2))
        log.info(
            "feedback read",
            topic=self.topic,
            partitions=len(partitions),
            applied=len(self.ledger),
            duplicates=self.ledger.duplicates,
            rejected=len(self._pending),
        )

    def poll(self) -> None:
        """Apply what arrived since the last call; never waits."""
        if self._consumer is not None:
            self._take(self._consumer.consume(_READ_BATCH, 0))

    def dead_letters(self, batch: int) -> list[OutRecord]:
        """The bad feedback not dead-lettered yet, as records of output batch `batch`."""
        records = [
            dead_letter_record(
                Reject(0, BAD_FEEDBACK, rejected.reason),
                rejected.message,
                self.kafka.dead_letter_topic,
                batch,
                self.kafka.max_message_bytes,
            )
            for rejected in self._pending
        ]
        self._pending.clear()
        return records

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("feedback consumer close failed", error=str(exc))
            self._consumer = None

    def _take(self, messages: list[Message]) -> set[int]:
        """Apply the messages in order; returns the partitions whose end was reached."""
        at_end: set[int] = set()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    log.warning("feedback topic read error", error=error.str())
                continue
            self._apply(message)
        return at_end

    def _apply(self, message: Message) -> None:
        try:
            event = parse_feedback(message.value(), self.ledger.config)
        except FeedbackError as exc:
            self._pending.append(_Rejected(message, str(exc)))
            self.metrics.feedback_rejected.inc()
            log.warning(
                "feedback rejected",
                reason=str(exc),
                partition=message.partition(),
                offset=message.offset(),
            )
            return
        if self.ledger.apply(event):
            self.metrics.feedback_events.labels(kind=event.kind).inc()
            log.info("feedback applied", kind=event.kind, target=event.target, id=event.event_id)
        else:
            self.metrics.feedback_duplicates.inc()
