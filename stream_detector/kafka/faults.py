"""What the librdkafka clients report, acted on: errors that may heal are logged, the first one
no retry can fix is kept for the loop to raise.

librdkafka reports errors through callbacks that run inside its own calls (poll, consume,
close), where raising would lose the exception; so a fatal error is only noted there and the
service's loop raises it at its next turn (`errors.fatal_message` decides what is fatal).
"""

from __future__ import annotations

import structlog
from confluent_kafka import KafkaError, Message, TopicPartition

from stream_detector.kafka.errors import fatal_message

log = structlog.get_logger(__name__)


class FatalServiceError(Exception):
    """The service cannot go on; the message says what to fix."""


class ClientFaults:
    """The clients' error callbacks, and what they found out."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.fatal: str | None = None
        # On the way out after a fatal error: commit nothing more, also for revoked partitions
        # (what was committed so far is consistent; anything after it is processed again).
        self.failing = False

    def note(self, message: str) -> None:
        """Remember a fatal error for the loop to raise; the first one is the cause, kept."""
        if self.fatal is None:
            self.fatal = message

    def raise_if_fatal(self) -> None:
        if self.fatal is not None:
            raise FatalServiceError(self.fatal)

    def on_client_error(self, error: KafkaError) -> None:
        """Every client's error_cb."""
        if self._note_if_fatal(error):
            return
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("all kafka brokers are down; reconnecting",
                        bootstrap_servers=self.bootstrap_servers)
        else:
            log.debug("kafka client error", error=error.str())

    def on_consume_error(self, error: KafkaError, message: Message) -> None:
        """An error event among consumed messages."""
        if self._note_if_fatal(error):
            return
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume error", error=error.str(), topic=message.topic(),
                        partition=message.partition())

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's on_commit. A failed asynchronous commit is only logged: its offsets
        stay released, and a later commit covers them (at the latest the one when leaving)."""
        if error is not None:
            log.warning("offset commit failed", error=error.str(), partitions=len(partitions))

    def _note_if_fatal(self, error: KafkaError) -> bool:
        message = fatal_message(error)
        if message is None:
            return False
        self.note(message)
        return True
