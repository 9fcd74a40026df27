"""Topics read to their end by a consumer that joins no group and commits nothing.

The commands (feedback, retrain) and the topic registry read whole topics, or the ends of them,
through assign(): no group is joined, so no one's group rebalances for them, and no one's
positions move. Where a partition ends is what the consumer is told on reaching it
(`enable.partition.eof`, set by `reader_config`), never a list-offsets answer, which some
brokers (Tansu) give wrongly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from stream_detector.config import KafkaConfig
from stream_detector.kafka.clients import create_client
from stream_detector.kafka.faults import ClientFaults, FatalServiceError
from stream_detector.kafka.settings import reader_config

READ_BATCH: Final = 1000
READ_WAIT_S: Final = 0.5

Partition = tuple[str, int]  # topic, partition


class TopicReadError(Exception):
    """A topic could not be read to its end; the message says why."""


class ReadTimeout(TopicReadError):
    """The deadline passed before every partition reported its end: a slow or unreachable
    broker, or a deadline too short for the topic."""


def topic_partitions(reader: Consumer, topic: str, timeout_s: float) -> list[Partition]:
    """Every partition of `topic`; TopicReadError when the broker has no such topic."""
    metadata = reader.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise TopicReadError(f"topic {topic!r} does not exist")
    return [(topic, partition) for partition in sorted(metadata.partitions)]


def batches_to_end(
    reader: Consumer,
    pending: set[Partition],
    deadline: float,
    faults: ClientFaults,
    *,
    batch: int = READ_BATCH,
    wait_s: float = READ_WAIT_S,
) -> Iterator[list[Message]]:
    """The records the assigned `reader` consumes, one consume call's worth at a time, until
    every partition in `pending` has reported its end; each is taken out of `pending` then, so
    the caller sees which are still being read.

    Raises ReadTimeout past `deadline` (time.monotonic()), FatalServiceError once a client
    error no retry can fix was reported to `faults`."""
    while pending:
        faults.raise_if_fatal()
        if time.monotonic() > deadline:
            unfinished = ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(pending))
            raise ReadTimeout(f"partitions {unfinished} not read to their end in time")
        records = []
        for message in reader.consume(batch, wait_s):
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                pending.discard((message.topic(), message.partition()))
            else:
                faults.on_consume_error(error, message)
        yield records


@contextmanager
def topic_reader(
    kafka: KafkaConfig, group_suffix: str, faults: ClientFaults
) -> Iterator[Consumer]:
    """A consumer with `reader_config`, closed on the way out. The broker's errors, raised
    inside or by the consumer, come out as TopicReadError."""
    conf = {**reader_config(kafka, group_suffix), "error_cb": faults.on_client_error}
    try:
        reader = create_client(Consumer, conf)
        try:
            yield reader
        finally:
            reader.close()
    except KafkaException as exc:
        raise TopicReadError(
            f"cannot read from {kafka.bootstrap_servers}: {exc.args[0].str()}"
        ) from None
    except FatalServiceError as exc:
        raise TopicReadError(str(exc)) from None


def read_topic(
    kafka: KafkaConfig,
    topic: str,
    group_suffix: str,
    take: Callable[[Message], None],
    timeout_s: float,
    faults: ClientFaults,
) -> None:
    """Every record of `topic`, from the start to the end of each partition, into `take` (in
    offset order within a partition). Raises TopicReadError (ReadTimeout after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    with topic_reader(kafka, group_suffix, faults) as reader:
        partitions = topic_partitions(reader, topic, timeout_s)
        reader.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in partitions])
        for records in batches_to_end(reader, set(partitions), deadline, faults):
            for message in records:
                take(message)
