"""KafkaConfig -> librdkafka property dicts, in one place.

Every client the project creates (the service's consumer and producer, admin clients in tools and
tests) takes its properties from here, so security settings and the delivery-guarantee properties
can't drift apart between clients. `redact` is the only way a config dict reaches a log line.
"""

from __future__ import annotations

import os
import socket

from stream_detector.config import ConfigError, KafkaConfig
from stream_detector.limits import FETCH_RESPONSE_FRAMING_BYTES

ClientConfig = dict[str, str | int | float | bool]

# librdkafka property names whose values are secrets; any name containing one of these is masked.
_SECRET_MARKERS = ("password", "secret", "key.pem", "ssl.key", "token", "jaas")


def common_config(kafka: KafkaConfig) -> ClientConfig:
    """Connection and security properties every client shares (`extra` is applied by callers)."""
    conf: ClientConfig = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol.lower(),
    }
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        conf["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        conf["sasl.password"] = kafka.sasl_password.get_secret_value()
    if kafka.ssl_ca_location:
        conf["ssl.ca.location"] = kafka.ssl_ca_location
    return conf


def _with_extra(conf: ClientConfig, kafka: KafkaConfig) -> ClientConfig:
    # A user who needs an exotic librdkafka setting gets the last word on it.
    conf.update(kafka.extra)
    return conf


def consumer_config(kafka: KafkaConfig) -> ClientConfig:
    """Offsets are stored and committed only by the service, after its output is acknowledged."""
    conf = common_config(kafka)
    conf.update(
        {
            "group.id": kafka.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # 'earliest' so that a new group (or a partition whose log was truncated) reads
            # everything rather than silently skipping what arrived before it joined.
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": kafka.partition_assignment_strategy,
            "session.timeout.ms": kafka.session_timeout_ms,
            # librdkafka's 3 s default would let a short session expire between two heartbeats.
            "heartbeat.interval.ms": min(3000, kafka.session_timeout_ms // 3),
            "isolation.level": "read_committed",
            "fetch.max.bytes": kafka.fetch_max_bytes,
            "receive.message.max.bytes": kafka.fetch_max_bytes + FETCH_RESPONSE_FRAMING_BYTES,
        }
    )
    return _with_extra(conf, kafka)


def reader_config(kafka: KafkaConfig, group_suffix: str) -> ClientConfig:
    """A consumer that is assigned partitions and reads them to their end, never joining a group
    or committing: the service's consumer settings (security, fetch sizes, read_committed, so
    that nothing aborted is read) in the group `<group_id>.<group_suffix>`, which librdkafka
    needs named. It is told when it reaches a partition's end (`enable.partition.eof`, from the
    fetch response's high watermark): list-offsets, which would say where the end is, is
    answered wrongly by some brokers (Tansu)."""
    group = f"{kafka.group_id}.{group_suffix}"
    conf = consumer_config(kafka.model_copy(update={"group_id": group}))
    conf["enable.partition.eof"] = True
    return conf


def producer_config(kafka: KafkaConfig, transactional_id: str | None = None) -> ClientConfig:
    """murmur2_random puts an alert key on the partition a Java client would choose."""
    conf = common_config(kafka)
    conf.update(
        {
            "partitioner": "murmur2_random",
            "acks": "all",
            # Ordering per key (an open before its resolve) without the idempotent producer: a
            # broker that loses its producer state on restart leaves an idempotent producer stuck,
            # while a retried duplicate is harmless because alerts carry a stable id.
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
            "linger.ms": 5,
            # The service bounds what is unacknowledged itself; librdkafka's queue must hold it.
            "queue.buffering.max.messages": max(kafka.max_in_flight, 1000),
            # Dead letters are cut to fit this; a batch of several records stays under it too,
            # so the topic's max.message.bytes, checked against it at start, accepts every one.
            "message.max.bytes": kafka.max_message_bytes,
            "batch.size": kafka.max_message_bytes,
        }
    )
    if transactional_id is not None:
        # Transactions need the idempotent producer; its broker-side state is then the point.
        conf["transactional.id"] = transactional_id
        conf["enable.idempotence"] = True
    return _with_extra(conf, kafka)


def admin_config(kafka: KafkaConfig) -> ClientConfig:
    return _with_extra(common_config(kafka), kafka)


def check_topic_limits(kafka: KafkaConfig, topic_limits: dict[str, int]) -> None:
    """Raise ConfigError when a topic's max.message.bytes (as the broker reports it; topics it
    does not report are not checked) cannot carry what the settings let through: every dead
    letter up to kafka.max_message_bytes must be accepted, and every input record the broker
    accepts must be fetchable under kafka.fetch_max_bytes."""
    problems = []
    dead_letters = topic_limits.get(kafka.dead_letter_topic)
    if dead_letters is not None and dead_letters < kafka.max_message_bytes:
        problems.append(
            f"topic {kafka.dead_letter_topic!r} (kafka.dead_letter_topic) accepts messages up to "
            f"max.message.bytes = {dead_letters}, below kafka.max_message_bytes = "
            f"{kafka.max_message_bytes}: lower kafka.max_message_bytes to at most {dead_letters} "
            "or raise the topic's max.message.bytes"
        )
    for topic in kafka.input_topics:
        accepted = topic_limits.get(topic)
        if accepted is not None and accepted > kafka.fetch_max_bytes:
            problems.append(
                f"input topic {topic!r} accepts records up to max.message.bytes = {accepted}, "
                f"more than kafka.fetch_max_bytes = {kafka.fetch_max_bytes} lets the consumer "
                f"fetch: raise kafka.fetch_max_bytes to at least {accepted} or lower the "
                "topic's max.message.bytes"
            )
    if problems:
        raise ConfigError("; ".join(problems))


def transactional_id(kafka: KafkaConfig) -> str:
    """Unique per process: with KIP-447 the consumer group generation fences zombie instances,
    so the id need not be stable across restarts, only distinct between live instances."""
    return f"{kafka.group_id}-{socket.gethostname()}-{os.getpid()}"


def redact(conf: ClientConfig) -> dict[str, str | int | float | bool]:
    """A copy safe to log: secret values replaced by '***'."""
    return {
        name: "***" if any(marker in name.lower() for marker in _SECRET_MARKERS) else value
        for name, value in conf.items()
    }
