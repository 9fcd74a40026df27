"""After an assignment: each partition read back up to the group's committed offset.

Everything before the committed offset was accepted by Alertmanager already, but the table of
open episodes (what must be kept firing, and the labels each resolve must repeat) lives in memory
only. So when the forwarder starts, or is given a partition in a rebalance, it reads that
partition from its beginning up to the committed offset and applies every record to the table
without posting anything; the consumer then carries on from the committed offset. An alert topic
carries two records per episode, so this is quick; `forward.rebuild_timeout_s` bounds it anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from stream_detector.config import KafkaConfig
from stream_detector.kafka.clients import create_client
from stream_detector.kafka.faults import ClientFaults
from stream_detector.kafka.settings import reader_config

log = structlog.get_logger(__name__)

_READ_BATCH: Final = 1000
_READ_WAIT_S: Final = 0.5


def read_back(
    kafka: KafkaConfig,
    committed: Sequence[TopicPartition],
    on_record: Callable[[Message], None],
    *,
    timeout_s: float,
    stop: threading.Event,
    faults: ClientFaults,
) -> int:
    """Hand each record below its partition's committed offset to `on_record`, in offset order
    per partition, and return how many there were. Partitions with nothing committed have
    nothing to read back. Gives up (logged) after `timeout_s` or when `stop` is set."""
    remaining = {tp.partition: tp.offset for tp in committed if tp.offset > 0}
    if not remaining:
        return 0
    # A group of its own: the forwarder's group must not see the read-back.
    conf = {**reader_config(kafka, "rebuild"), "error_cb": faults.on_client_error}
    reader = create_client(Consumer, conf)
    read = 0
    try:
        reader.assign(
            [TopicPartition(kafka.alert_topic, p, OFFSET_BEGINNING) for p in sorted(remaining)]
        )
        deadline = time.monotonic() + timeout_s
        while remaining and not stop.is_set():
            if time.monotonic() > deadline:
                log.warning(
                    "alert topic not read back in time; the open episodes of these partitions "
                    "that were not read are not refreshed and expire in Alertmanager",
                    partitions=sorted(remaining),
                    timeout_s=timeout_s,
                    read=read,
                )
                break
            for message in reader.consume(_READ_BATCH, _READ_WAIT_S):
                partition = message.partition()
                error = message.error()
                if error is not None:
                    # The end of the partition: the committed offset is at or past it.
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.pop(partition, None)
                    else:
                        faults.on_consume_error(error, message)
                    continue
                if partition not in remaining:
                    continue
                offset = message.offset()
                if offset < remaining[partition]:
                    on_record(message)
                    read += 1
                # A transaction marker may hold the offset just below the committed one, so a
                # record at or past it ends the partition too.
                if offset >= remaining[partition] - 1:
                    del remaining[partition]
    finally:
        reader.close()
    return read
