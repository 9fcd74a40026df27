"""The first records of a Kafka topic, read without joining or moving any consumer group.

Partitions are assigned directly at their beginning, so no group is joined and nothing is
committed: sampling a topic must not change where the real service will start reading.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from stream_detector.config import KafkaConfig
from stream_detector.inspect.sample import Sample, SampleError, json_records
from stream_detector.kafka.settings import ClientConfig, admin_config

ConsumerFactory = Callable[[ClientConfig], Any]


def sampling_config(kafka: KafkaConfig) -> ClientConfig:
    """Connection and security as every client has them, plus a throwaway group that never
    commits (assign() needs a group.id even though no group is joined)."""
    conf = admin_config(kafka)
    conf.update(
        {
            "group.id": f"stream-detector-init-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            # A refused connection is logged every 50 ms; the one-line error says it instead.
            "log_level": 2,
        }
    )
    return conf


def _default_factory(conf: ClientConfig) -> Any:
    from confluent_kafka import Consumer

    return Consumer(conf)


def read_topic(
    topic: str,
    kafka: KafkaConfig,
    limit: int,
    timeout_s: float,
    consumer_factory: ConsumerFactory | None = None,
) -> Sample:
    """Up to `limit` records from the start of every partition of `topic`, within `timeout_s`."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

    consumer = (consumer_factory or _default_factory)(sampling_config(kafka))
    deadline = time.monotonic() + timeout_s
    payloads: list[bytes] = []
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            raise SampleError(
                f"cannot reach Kafka at {kafka.bootstrap_servers} to read topic {topic!r}: {exc}"
            ) from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise SampleError(
                f"{topic!r} is neither an existing file nor a topic on {kafka.bootstrap_servers}"
            )
        partitions = sorted(found.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        while len(payloads) < limit and len(at_end) < len(partitions):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for message in consumer.consume(num_messages=limit - len(payloads), timeout=left):
                error = message.error()
                if error is None:
                    if message.value() is not None:  # a tombstone carries no record
                        payloads.append(message.value())
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    raise SampleError(f"reading topic {topic!r} failed: {error.str()}")
    finally:
        consumer.close()
    records, bad = json_records(payloads, limit)
    if not records:
        raise SampleError(
            f"topic {topic!r} gave no JSON records within {timeout_s:g} s "
            f"({len(payloads)} messages, {bad} not JSON objects); is it empty?"
        )
    return Sample(records, f"topic {topic} on {kafka.bootstrap_servers}", "kafka", bad)
