"""Telling faults that heal with time from ones a person must fix.

librdkafka retries everything forever, so the service has to decide. Errors it reports with a
code of their own (authentication, SSL, authorisation) are fatal at once. A security mismatch
often has no such code: an SSL client talking to a plaintext listener just times out in its
handshake, and librdkafka reports a transport failure, the same as for a broker that is down.
The difference is that a mismatched broker still accepts TCP connections. `HandshakeWatch`
uses that: a broker that accepts connections yet never completes the Kafka handshake for
`give_up_after_s` is reported as a handshake failure, while one that refuses connections (really
down) keeps being retried.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError

SECURITY_HINT = (
    "check kafka.security_protocol (it must match the broker listener's), kafka.sasl_mechanism, "
    "kafka.sasl_username, kafka.sasl_password (SD_KAFKA__SASL_PASSWORD) and kafka.ssl_ca_location"
)

# Client errors no retry can fix, with what the user should change.
FATAL_HINTS: dict[int, str] = {
    KafkaError._AUTHENTICATION: SECURITY_HINT,
    KafkaError.SASL_AUTHENTICATION_FAILED: "check kafka.sasl_username and kafka.sasl_password",
    KafkaError._SSL: "check kafka.security_protocol, kafka.ssl_ca_location and the broker's "
    "certificate",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "grant this principal read on kafka.input_topics and "
    "write on kafka.alert_topic and kafka.dead_letter_topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "grant this principal access to group kafka.group_id",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "grant this principal transactional "
    "write access, or set kafka.processing_guarantee = 'at_least_once'",
    KafkaError._INVALID_ARG: "fix the librdkafka settings in kafka.extra",
}


def fatal_message(error: KafkaError) -> str | None:
    """What to tell the user about an error no retry can fix; None when it may heal."""
    hint = FATAL_HINTS.get(error.code())
    if not (error.fatal() or hint is not None):
        return None
    return f"kafka: {error.str()}" + (f"; {hint}" if hint else "")


def accepting_servers(bootstrap_servers: str, timeout_s: float = 2.0) -> list[str]:
    """The bootstrap servers (host:port, comma-separated) that accept a TCP connection now."""
    accepting = []
    for server in filter(None, (part.strip() for part in bootstrap_servers.split(","))):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                accepting.append(server)
        except (OSError, ValueError):
            continue
    return accepting


@dataclass
class HandshakeWatch:
    """How long the broker has accepted TCP connections without answering Kafka requests."""

    give_up_after_s: float
    clock: Callable[[], float] = time.monotonic
    _since: float | None = None

    def failed(self, accepting: bool) -> bool:
        """Note one failed attempt to reach the broker; True once it has accepted connections
        through every failure for `give_up_after_s`. A refused connection starts over: the
        broker is down, not mismatched."""
        if not accepting:
            self._since = None
            return False
        now = self.clock()
        if self._since is None:
            self._since = now
        return now - self._since >= self.give_up_after_s

    def message(self, bootstrap_servers: str, error: str) -> str:
        return (
            f"the broker at {bootstrap_servers} accepts TCP connections but the Kafka handshake "
            f"has failed for {self.give_up_after_s:.0f} s ({error}); {SECURITY_HINT}"
        )
