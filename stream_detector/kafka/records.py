"""Between Kafka messages and the engine: consumed batches in, alert and dead-letter records out.

Reading the attributes of each consumed Message object is the one per-message Python step that
cannot be avoided (they are C objects with accessor methods); everything computed from them,
such as the offsets to commit per partition, works on whole arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message

from stream_detector.aggregate.streams import partition_stream
from stream_detector.engine.alerts import Alert
from stream_detector.engine.types import Reject
from stream_detector.kafka.delivery import OutRecord, Partition
from stream_detector.limits import Header, fit_record

ALERT_CONTENT_TYPE = b"application/cloudevents+json; charset=utf-8"
INPUT_HEADER_PREFIX = "input."


@dataclass(frozen=True)
class ConsumedBatch:
    """One consume() call's data messages as parallel arrays, in consumption order."""

    messages: list[Message]
    payloads: list[bytes]
    keys: list[bytes | None]
    broker_ts_ms: np.ndarray  # int64 [N]
    offsets: np.ndarray  # int64 [N]
    # The batch's distinct (topic, partition)s and, per message, the index of its own: the one
    # lookup over topic names that the offsets and the state bookkeeping share.
    partition_list: list[Partition]
    partition_ids: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.messages)

    @staticmethod
    def from_messages(messages: list[Message]) -> ConsumedBatch:
        """`messages` must hold no error events (the caller splits those off)."""
        n = len(messages)
        topics = [m.topic() for m in messages]
        partitions = np.fromiter((m.partition() for m in messages), np.int64, n)
        partition_list, partition_ids = _partition_index(topics, partitions)
        return ConsumedBatch(
            messages=messages,
            # A tombstone (null value) decodes as an ordinary reject rather than crashing decode.
            payloads=[m.value() or b"" for m in messages],
            keys=[m.key() for m in messages],
            broker_ts_ms=np.fromiter((m.timestamp()[1] for m in messages), np.int64, n),
            offsets=np.fromiter((m.offset() for m in messages), np.int64, n),
            partition_list=partition_list,
            partition_ids=partition_ids,
        )

    def next_offsets(self) -> dict[Partition, int]:
        """Per (topic, partition): the offset after the last message, i.e. what to commit."""
        last = np.full(len(self.partition_list), -1, dtype=np.int64)
        np.maximum.at(last, self.partition_ids, self.offsets)
        return {
            partition: offset + 1
            for partition, offset in zip(self.partition_list, last.tolist(), strict=True)
        }

    def stream_codes(self) -> np.ndarray:
        """Each message's aggregation stream (its topic-partition's code, one watermark per
        input partition in aggregate mode), from the batch's partition lookup."""
        codes = np.array([partition_stream(t, p) for t, p in self.partition_list], dtype=np.int64)
        return codes[self.partition_ids]


def _partition_index(
    topics: list[str], partitions: np.ndarray
) -> tuple[list[Partition], np.ndarray]:
    """Distinct (topic, partition)s in sorted order, and each message's index among them.

    A batch almost always comes from one topic: a set of the names says so at C speed, and only
    several topics pay for sorting the names (np.unique over an object array)."""
    if not topics:
        return [], np.empty(0, dtype=np.int64)
    names = sorted(set(topics))
    if len(names) == 1:
        topic_ids = np.zeros(len(topics), dtype=np.int64)
    else:
        _, inverse = np.unique(np.array(topics, dtype=object), return_inverse=True)
        topic_ids = inverse.reshape(-1).astype(np.int64)
    width = int(partitions.max()) + 1
    codes, ids = np.unique(topic_ids * width + partitions, return_inverse=True)
    partition_list = [(names[code // width], code % width) for code in codes.tolist()]
    return partition_list, ids.reshape(-1).astype(np.int64)


def alert_record(alert: Alert, topic: str, source: str, batch: int) -> OutRecord:
    """Keyed by the entity key so every alert of a key lands on one partition, in order."""
    return OutRecord(
        topic=topic,
        value=alert.to_cloudevent(source),
        key=alert.key.encode(),
        headers=[("content-type", ALERT_CONTENT_TYPE)],
        batch=batch,
    )


def dead_letter_record(
    reject: Reject, message: Message, topic: str, batch: int, max_bytes: int
) -> OutRecord:
    """The original bytes and key with headers saying why and where from, at most `max_bytes`.

    The input record's own headers come along under INPUT_HEADER_PREFIX, so that an input header
    named `reason` cannot pass for the service's. A record too large for `max_bytes` (the
    producer's limit, which the dead-letter topic is checked to accept) is cut by `fit_record`
    rather than refused by the producer: refusing it would stop the service on the same record
    at every restart.
    """
    own: list[Header] = [
        ("reason", reject.reason.encode()),
        ("detail", reject.detail.encode()),
        ("source_topic", message.topic().encode()),
        ("source_partition", str(message.partition()).encode()),
        ("source_offset", str(message.offset()).encode()),
    ]
    copied = [(INPUT_HEADER_PREFIX + name, value) for name, value in message.headers() or []]
    value, key, headers = fit_record(message.value(), message.key(), own, copied, max_bytes)
    return OutRecord(topic=topic, value=value, key=key, headers=headers, batch=batch)
