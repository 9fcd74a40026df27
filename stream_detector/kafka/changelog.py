"""The Kafka changelog store: checkpoints in a topic, so whichever instance gets a partition can
restore it.

A checkpoint can be tens of megabytes and a Kafka message is limited (1 MB by default), so each
is split into chunks produced back to back to one changelog partition, keyed
``<topic>/<partition>/<chunk>`` and carrying a checkpoint id and the chunk count in headers.

Restore does not rely on compaction: it reads the changelog partitions to their end and keeps,
per input partition, the last checkpoint whose chunks all arrived. Compaction (one record per
key) may be enabled to bound the topic's size: the newest checkpoint's chunks are the newest
records of their keys, and a left-over higher chunk of an older, longer checkpoint never
completes. Its one cost: a writer that crashes mid-checkpoint leaves chunks that may compact
away the previous checkpoint's, and that partition then restores cold once. The end is
found through partition-EOF events and the fetch response's cached high watermark, never
list-offsets, which some brokers (Tansu) answer wrongly.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from stream_detector.config import KafkaConfig
from stream_detector.kafka.settings import common_config
from stream_detector.kafka.store import Partition, StateStoreError

log = structlog.get_logger(__name__)

CHUNK_BYTES = 512 * 1024


@dataclass(frozen=True)
class ChangelogRecord:
    """One changelog message, as produced or read back."""

    key: bytes
    value: bytes
    headers: dict[str, bytes]


def chunk_records(partition: Partition, data: bytes, checkpoint_id: str) -> list[ChangelogRecord]:
    """Split one checkpoint into records, in the order they must be produced."""
    topic, number = partition
    pieces = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    return [
        ChangelogRecord(
            key=f"{topic}/{number}/{i}".encode(),
            value=piece,
            headers={
                "checkpoint": checkpoint_id.encode(),
                "chunk": str(i).encode(),
                "chunks": str(len(pieces)).encode(),
            },
        )
        for i, piece in enumerate(pieces)
    ]


def latest_checkpoints(records: Iterable[ChangelogRecord]) -> dict[Partition, bytes]:
    """The last complete checkpoint per input partition, from records in changelog order.

    Chunks of one checkpoint are consecutive per input partition; a record of another id starts
    a new checkpoint, and a checkpoint counts once every chunk 0..n-1 of it has been seen.
    Records that are not checkpoint chunks are skipped.
    """
    pending: dict[Partition, tuple[bytes, list[bytes | None]]] = {}
    latest: dict[Partition, bytes] = {}
    for record in records:
        try:
            topic, number, chunk = record.key.decode().rsplit("/", 2)
            partition = (topic, int(number))
            index, count = int(record.headers["chunk"]), int(record.headers["chunks"])
            checkpoint_id = record.headers["checkpoint"]
        except (KeyError, ValueError, UnicodeDecodeError):
            continue
        if not 0 <= index < count or int(chunk) != index:
            continue
        current = pending.get(partition)
        if current is None or current[0] != checkpoint_id or len(current[1]) != count:
            current = (checkpoint_id, [None] * count)
            pending[partition] = current
        current[1][index] = record.value
        if all(piece is not None for piece in current[1]):
            latest[partition] = b"".join(piece for piece in current[1] if piece is not None)
            del pending[partition]
    return latest


class KafkaChangelogStore:
    """Checkpoints in `topic`; each input partition's always go to the same changelog partition."""

    def __init__(self, kafka: KafkaConfig, topic: str, timeout_s: float = 60.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer: Producer | None = None
        self._n_partitions: int | None = None

    def save(self, checkpoints: Mapping[Partition, bytes]) -> None:
        producer = self._require_producer()
        failures: list[str] = []

        def on_delivery(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                failures.append(error.str())

        try:
            self.produce(producer, checkpoints, on_delivery)
            remaining = producer.flush(self.timeout_s)
        except KafkaException as exc:
            raise StateStoreError(f"changelog {self.topic!r}: {exc.args[0].str()}") from None
        if remaining or failures:
            raise StateStoreError(
                f"changelog {self.topic!r}: {remaining} record(s) unacknowledged, "
                f"errors: {failures[:3]}"
            )

    def produce(
        self,
        producer: Producer,
        checkpoints: Mapping[Partition, bytes],
        on_delivery: Callable[[KafkaError | None, object], None] | None = None,
    ) -> None:
        """Hand the checkpoints' chunks to `producer` without waiting for them.

        `save` uses its own producer and flushes; the service passes its transactional producer
        inside an open transaction instead, so the checkpoint commits (or aborts) together with
        that batch's alerts and input offsets. Raises KafkaException."""
        n = self._changelog_partitions(producer)
        for partition, data in checkpoints.items():
            target = self._target(partition, n)
            for record in chunk_records(partition, data, uuid.uuid4().hex):
                self._produce(producer, record, target, on_delivery)

    def load(self, partitions: Collection[Partition]) -> dict[Partition, bytes]:
        if not partitions:
            return {}
        wanted = set(partitions)
        consumer = Consumer(
            {
                **common_config(self.kafka),
                **self.kafka.extra,
                "group.id": f"{self.kafka.group_id}-state-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        try:
            n = self._changelog_partitions(consumer)
            sources = sorted({self._target(p, n) for p in wanted})
            records = self._read_to_end(consumer, sources)
        except KafkaException as exc:
            raise StateStoreError(f"changelog {self.topic!r}: {exc.args[0].str()}") from None
        finally:
            consumer.close()
        return {p: data for p, data in latest_checkpoints(records).items() if p in wanted}

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None

    def _read_to_end(self, consumer: Consumer, sources: list[int]) -> list[ChangelogRecord]:
        """Every record of the changelog partitions `sources`, each partition in offset order."""
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sources])
        records: list[ChangelogRecord] = []
        position = dict.fromkeys(sources, 0)
        done: set[int] = set()
        deadline = time.monotonic() + self.timeout_s
        while len(done) < len(sources):
            if time.monotonic() > deadline:
                raise StateStoreError(
                    f"changelog {self.topic!r} not read to its end within {self.timeout_s}s"
                )
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        done.add(message.partition())
                        continue
                    raise KafkaException(error)
                records.append(
                    ChangelogRecord(
                        key=message.key() or b"",
                        value=message.value() or b"",
                        headers=dict(message.headers() or []),
                    )
                )
                position[message.partition()] = message.offset() + 1
            for p in sources:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), cached=True
                )
                if high >= 0 and position[p] >= high:
                    done.add(p)
        return records

    def _require_producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                {
                    **common_config(self.kafka),
                    "acks": "all",
                    "linger.ms": 5,
                    "message.max.bytes": CHUNK_BYTES * 2,
                    **self.kafka.extra,
                }
            )
        return self._producer

    def _changelog_partitions(self, client: Producer | Consumer) -> int:
        if self._n_partitions is None:
            metadata = client.list_topics(self.topic, timeout=10)
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise StateStoreError(
                    f"changelog topic {self.topic!r} does not exist; create it or set "
                    "state.changelog_topic"
                )
            self._n_partitions = len(topic.partitions)
        return self._n_partitions

    @staticmethod
    def _target(partition: Partition, n: int) -> int:
        """Stable across processes (unlike hash()): every instance looks in the same place."""
        topic, number = partition
        return zlib.crc32(f"{topic}/{number}".encode()) % n

    def _produce(
        self,
        producer: Producer,
        record: ChangelogRecord,
        target: int,
        on_delivery: Callable[[KafkaError | None, object], None] | None,
    ) -> None:
        # A transaction's commit fails by itself if a record of it is not delivered, so the
        # transactional caller needs no callback.
        callback = {} if on_delivery is None else {"on_delivery": on_delivery}
        while True:
            try:
                producer.produce(
                    self.topic,
                    value=record.value,
                    key=record.key,
                    partition=target,
                    headers=list(record.headers.items()),
                    **callback,
                )
                return
            except BufferError:
                producer.poll(0.1)
