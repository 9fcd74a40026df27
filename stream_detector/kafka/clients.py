"""The service's librdkafka clients: creating them, and the one place its parts find them.

The consumer and the producer exist only between the service's start and its close, while the
parts that use them (output, commit policy, recovery) are made before; they all hold this one
`Clients` and look the clients up when they act.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from confluent_kafka import Consumer, KafkaException, Producer

from stream_detector.kafka.faults import FatalServiceError

log = structlog.get_logger(__name__)

_Client = TypeVar("_Client")


def create_client(factory: Callable[[dict[str, Any]], _Client], conf: dict[str, Any]) -> _Client:
    """A librdkafka client, or FatalServiceError naming the settings when librdkafka refuses
    the configuration (e.g. a SASL mechanism this build lacks: GSSAPI is librdkafka's default)."""
    try:
        return factory(conf)
    except KafkaException as exc:
        raise FatalServiceError(
            f"cannot create the Kafka clients: {exc.args[0].str()}; check kafka.security_protocol "
            "and kafka.sasl_mechanism, and kafka.extra (passed to librdkafka as is)"
        ) from None


class Clients:
    """The consumer and the producer; None before the start and after the close."""

    def __init__(self) -> None:
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None

    def require_consumer(self) -> Consumer:
        if self.consumer is None:
            raise RuntimeError("consumer not started")
        return self.consumer

    def require_producer(self) -> Producer:
        if self.producer is None:
            raise RuntimeError("producer not started")
        return self.producer

    def close(self) -> None:
        """Leave the group (closing the consumer runs the revoke callback, which may still
        produce and commit), then let the producer go."""
        if self.consumer is not None:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed", error=str(exc))
            finally:
                self.consumer = None
        self.producer = None
