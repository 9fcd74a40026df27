"""Between Kafka messages and the engine: consumed batches in, alert and dead-letter records out.

Reading the attributes of each consumed Message object is the one per-message Python step that
cannot be avoided (they are C objects with accessor methods); everything computed from them,
such as the offsets to commit per partition, works on whole arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message

from stream_detector.engine.alerts import Alert
from stream_detector.engine.types import Reject
from stream_detector.kafka.delivery import OutRecord, Partition

ALERT_CONTENT_TYPE = b"application/cloudevents+json; charset=utf-8"


@dataclass(frozen=True)
class ConsumedBatch:
    """One consume() call's data messages as parallel arrays, in consumption order."""

    messages: list[Message]
    payloads: list[bytes]
    keys: list[bytes | None]
    broker_ts_ms: np.ndarray  # int64 [N]
    topics: np.ndarray  # object [N]
    partitions: np.ndarray  # int64 [N]
    offsets: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.messages)

    @staticmethod
    def from_messages(messages: list[Message]) -> ConsumedBatch:
        """`messages` must hold no error events (the caller splits those off)."""
        n = len(messages)
        return ConsumedBatch(
            messages=messages,
            # A tombstone (null value) decodes as an ordinary reject rather than crashing decode.
            payloads=[m.value() or b"" for m in messages],
            keys=[m.key() for m in messages],
            broker_ts_ms=np.fromiter((m.timestamp()[1] for m in messages), np.int64, n),
            topics=np.array([m.topic() for m in messages], dtype=object),
            partitions=np.fromiter((m.partition() for m in messages), np.int64, n),
            offsets=np.fromiter((m.offset() for m in messages), np.int64, n),
        )

    def next_offsets(self) -> dict[Partition, int]:
        """Per (topic, partition): the offset after the last message, i.e. what to commit."""
        if len(self) == 0:
            return {}
        names, topic_index = np.unique(self.topics, return_inverse=True)
        width = int(self.partitions.max()) + 1
        codes = topic_index.astype(np.int64) * width + self.partitions
        unique_codes, group = np.unique(codes, return_inverse=True)
        last = np.full(len(unique_codes), -1, dtype=np.int64)
        np.maximum.at(last, group, self.offsets)
        return {
            (str(names[code // width]), int(code % width)): int(offset) + 1
            for code, offset in zip(unique_codes.tolist(), last.tolist(), strict=True)
        }


def alert_record(alert: Alert, topic: str, source: str, batch: int) -> OutRecord:
    """Keyed by the entity key so every alert of a key lands on one partition, in order."""
    return OutRecord(
        topic=topic,
        value=alert.to_cloudevent(source),
        key=alert.key.encode(),
        headers=[("content-type", ALERT_CONTENT_TYPE)],
        batch=batch,
    )


def dead_letter_record(reject: Reject, message: Message, topic: str, batch: int) -> OutRecord:
    """The original bytes and key, untouched, with headers saying why and where from."""
    return OutRecord(
        topic=topic,
        value=message.value(),
        key=message.key(),
        headers=[
            ("reason", reject.reason.encode()),
            ("detail", reject.detail.encode()),
            ("source_topic", message.topic().encode()),
            ("source_partition", str(message.partition()).encode()),
            ("source_offset", str(message.offset()).encode()),
        ],
        batch=batch,
    )
