"""Before the service (or the alert forwarder) starts its clients: wait for the broker, and check
its topics.

A broker that is down is waited for (it may be starting too); one that accepts connections but
fails the handshake or authentication, and topics that are missing or too small for the size
settings, end the service with a message naming the setting to change.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from stream_detector.config import KafkaConfig, Settings
from stream_detector.kafka.clients import create_client
from stream_detector.kafka.errors import HandshakeWatch, accepting_servers
from stream_detector.kafka.faults import ClientFaults, FatalServiceError
from stream_detector.kafka.settings import admin_config, check_topic_limits

log = structlog.get_logger(__name__)

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 30.0

# A broker that accepts connections but fails the handshake this long is mismatched, not down.
# librdkafka gives up on one SSL handshake after 30 s (socket.connection.setup.timeout.ms).
_HANDSHAKE_GIVE_UP_S = 30.0


def wait_for_broker(settings: Settings, stop: threading.Event, faults: ClientFaults) -> bool:
    """Retry with backoff until the broker answers and the topics exist; False if stopped.

    A broker that is down is waited for; one that accepts connections but fails the
    handshake or authentication ends the service (`errors.HandshakeWatch`)."""
    kafka = settings.kafka
    reached = _reach_broker(kafka, stop, faults)
    if reached is None:
        return False
    admin, present = reached
    _require_topics(kafka, _service_topics(settings), present)
    _check_topic_limits(kafka, admin)
    return True


def wait_for_topics(
    kafka: KafkaConfig, wanted: Mapping[str, str], stop: threading.Event, faults: ClientFaults
) -> bool:
    """`wait_for_broker` for a client of a few topics only (the alert forwarder reads one):
    `wanted` maps each topic to the setting that names it. False if stopped first."""
    reached = _reach_broker(kafka, stop, faults)
    if reached is None:
        return False
    _require_topics(kafka, wanted, reached[1])
    return True


def _reach_broker(
    kafka: KafkaConfig, stop: threading.Event, faults: ClientFaults
) -> tuple[AdminClient, dict[str, Any]] | None:
    """An admin client and the topics the broker lists, once it answers; None if stopped."""
    admin = create_client(AdminClient, {**admin_config(kafka), "error_cb": faults.on_client_error})
    handshake = HandshakeWatch(_HANDSHAKE_GIVE_UP_S)
    delay = _BACKOFF_START_S
    while not stop.is_set():
        faults.raise_if_fatal()
        try:
            metadata = admin.list_topics(timeout=5.0)
        except KafkaException as exc:
            admin.poll(0)  # authentication and SSL errors only reach error_cb from here
            faults.raise_if_fatal()
            error = exc.args[0].str()
            accepting = accepting_servers(kafka.bootstrap_servers)
            if handshake.failed(bool(accepting)):
                raise FatalServiceError(handshake.message(kafka.bootstrap_servers, error))
            log.warning(
                "kafka broker accepts connections but the handshake failed; retrying"
                if accepting
                else "kafka broker unreachable; retrying",
                bootstrap_servers=kafka.bootstrap_servers,
                error=error,
                retry_in_s=delay,
            )
            stop.wait(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
            continue
        return admin, metadata.topics
    return None


def _service_topics(settings: Settings) -> dict[str, str]:
    """Every topic the service reads or writes, with the setting that names it."""
    kafka = settings.kafka
    wanted = {topic: "kafka.input_topics" for topic in kafka.input_topics}
    wanted[kafka.alert_topic] = "kafka.alert_topic"
    wanted[kafka.dead_letter_topic] = "kafka.dead_letter_topic"
    if kafka.feedback_topic is not None:
        wanted[kafka.feedback_topic] = "kafka.feedback_topic"
    if settings.state.store == "kafka":
        wanted[settings.state.changelog_topic] = "state.changelog_topic"
    return wanted


def _require_topics(
    kafka: KafkaConfig, wanted: Mapping[str, str], present: Mapping[str, object]
) -> None:
    """FatalServiceError naming each wanted topic the broker lacks and the setting naming it."""
    missing = [
        f"{topic!r} ({setting})"
        for topic, setting in wanted.items()
        if topic not in present or getattr(present[topic], "error", None) is not None
    ]
    if missing:
        raise FatalServiceError(
            f"topic(s) {', '.join(missing)} do not exist on {kafka.bootstrap_servers}: "
            "create them, or point those settings at existing topics"
        )


def _check_topic_limits(kafka: KafkaConfig, admin: AdminClient) -> None:
    """The dead-letter and input topics' max.message.bytes against the size settings. A
    broker that does not report them (Tansu reports no topic configs) is not checked."""
    topics = [kafka.dead_letter_topic, *kafka.input_topics]
    futures = admin.describe_configs([ConfigResource("topic", topic) for topic in topics])
    limits: dict[str, int] = {}
    for resource, future in futures.items():
        try:
            entry = future.result(timeout=10.0).get("max.message.bytes")
        except (KafkaException, TimeoutError) as exc:
            log.warning("cannot read the topic's max.message.bytes; not checked",
                        topic=resource.name, error=str(exc))
            continue
        if entry is not None and entry.value is not None:
            limits[resource.name] = int(entry.value)
    check_topic_limits(kafka, limits)
