"""Error classification without a broker: which client errors end the service, and how a broker
that accepts connections but fails the handshake is told from one that is down."""

from __future__ import annotations

import socket

import pytest
from confluent_kafka import KafkaError

from stream_detector.demo.broker import free_port
from stream_detector.kafka.errors import HandshakeWatch, accepting_servers, fatal_message


@pytest.mark.parametrize(
    "code", [KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL]
)
def test_authentication_and_ssl_errors_are_fatal_and_name_the_settings(code: int) -> None:
    message = fatal_message(KafkaError(code, "handshake failed"))
    assert message is not None and "handshake failed" in message
    assert "kafka.sasl" in message or "kafka.security_protocol" in message


@pytest.mark.parametrize(
    "code", [KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT]
)
def test_transport_errors_may_heal(code: int) -> None:
    assert fatal_message(KafkaError(code)) is None


def test_a_fatal_flagged_error_is_fatal_without_a_hint() -> None:
    message = fatal_message(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    assert message == "kafka: fenced"


def test_accepting_servers_tells_a_listener_from_a_closed_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        closed = f"127.0.0.1:{free_port()}"
        servers = f"{closed}, 127.0.0.1:{open_port},not-a-server"
        assert accepting_servers(servers, timeout_s=1.0) == [f"127.0.0.1:{open_port}"]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_broker_refusing_connections_is_waited_for_forever() -> None:
    clock = _Clock()
    watch = HandshakeWatch(30.0, clock)
    for _ in range(100):
        clock.now += 60
        assert not watch.failed(accepting=False)


def test_a_broker_accepting_connections_without_a_handshake_gives_up_in_bounded_time() -> None:
    clock = _Clock()
    watch = HandshakeWatch(30.0, clock)
    assert not watch.failed(accepting=True)
    clock.now += 29
    assert not watch.failed(accepting=True)
    clock.now += 1
    assert watch.failed(accepting=True)
    assert "kafka.security_protocol" in watch.message("b:9092", "transport failure")


def test_a_refused_connection_in_between_starts_the_handshake_clock_over() -> None:
    clock = _Clock()
    watch = HandshakeWatch(30.0, clock)
    watch.failed(accepting=True)
    clock.now += 20
    assert not watch.failed(accepting=False)  # down again: restarting, not mismatched
    clock.now += 20
    assert not watch.failed(accepting=True)
    clock.now += 29
    assert not watch.failed(accepting=True)
    clock.now += 1
    assert watch.failed(accepting=True)
