"""Broker-side helpers for the benchmark: topics, bulk produce and the consume ceilings.

Clients take their properties from `stream_detector.kafka.settings`, exactly as the service's do,
so the ceiling loops fetch the way the service fetches and the comparison is like for like.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_detector.benchmarking.results import Throughput
from stream_detector.config import KafkaConfig
from stream_detector.kafka.settings import admin_config, consumer_config, producer_config

_POLL_EVERY = 10_000  # produce() calls between polls, to serve delivery reports


def create_topics(kafka: KafkaConfig, names: Sequence[str], partitions: int = 1) -> None:
    admin = AdminClient(admin_config(kafka))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
    )
    for future in futures.values():
        future.result(timeout=30)


def send(producer: Producer, topic: str, value: bytes, key: bytes) -> None:
    """produce(), waiting while librdkafka's queue is full instead of failing."""
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.01)


def produce_all(
    kafka: KafkaConfig, topic: str, payloads: Sequence[bytes], keys: Sequence[bytes]
) -> float:
    """Write every message and wait for the acknowledgements; returns the seconds it took."""
    producer = Producer(producer_config(kafka))
    started = time.perf_counter()
    for i, (key, payload) in enumerate(zip(keys, payloads, strict=True)):
        send(producer, topic, payload, key)
        if i % _POLL_EVERY == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} benchmark messages were not acknowledged by the broker")
    return time.perf_counter() - started


def beginning_of(consumer: Consumer, topic: str) -> list[TopicPartition]:
    """Every partition of `topic` from its first offset (Tansu's 'latest' is unreliable)."""
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)]


def consume_ceiling(kafka: KafkaConfig, topic: str, expected: int, *, decode: bool) -> Throughput:
    """Consume `expected` messages from the start of `topic` as the service's loop would,
    touching each message's value (and parsing it with orjson when `decode`), nothing more.

    Partitions are assigned rather than subscribed (no group join to wait for) and the loop is
    timed from the first non-empty batch, as the service's sustained rate is timed past its start.
    """
    conf = consumer_config(kafka.model_copy(update={"group_id": f"bench-{uuid.uuid4().hex}"}))
    consumer = Consumer(conf)
    consumer.assign(beginning_of(consumer, topic))
    seen = 0
    started: float | None = None
    try:
        while seen < expected:
            messages = consumer.consume(kafka.batch_size, kafka.batch_timeout_s)
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            if decode:
                for message in messages:
                    orjson.loads(message.value())
            else:
                for message in messages:
                    message.value()
            seen += len(messages)
        assert started is not None
        return Throughput(seen, time.perf_counter() - started)
    finally:
        consumer.close()
