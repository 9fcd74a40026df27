"""Size limits, input headers and security mismatches against the real broker.

Records just under and over each size limit, at the default size settings, are processed or
dead-lettered and the service keeps running; a dead letter too large for the producer's limit is
truncated with headers naming the original. A broker that answers but fails the handshake ends
the service with the setting named, within bounded time.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Producer
from kafka_harness import T0, committed_at, partition_ends, settled, sine_feed, wait_until

from stream_detector.config import InputConfig, KafkaConfig
from stream_detector.limits import record_size

pytestmark = pytest.mark.integration

INPUT_LIMIT = InputConfig().max_message_bytes
PRODUCE_LIMIT = KafkaConfig().max_message_bytes


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list | None]]) -> None:
    """Records as (key, value, headers) through a producer that allows 6 MB, like a producer whose max.message.bytes was raised."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 6_000_000})
    failures: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    for key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(60) == 0 and not failures, failures


def _event(size: int) -> bytes:
    """A valid event for key k00, padded to exactly `size` bytes."""
    head = orjson.dumps({"key": "k00", "ts": T0 + 500.0, "value": 0.5, "pad": ""})
    return head[:-2] + b"x" * (size - len(head)) + head[-2:]


def test_records_around_every_size_limit_are_processed_or_dead_lettered(
    start_service, service_setup, produce_events, consume_all, kafka_bootstrap
) -> None:
    service = start_service(state={"store": "none"})
    good = sine_feed(4, 20, seed=5)
    produce_events(service_setup.input_topic, good[:40])
    big = {
        "at the input limit": _event(INPUT_LIMIT),
        "one byte over the input limit": _event(INPUT_LIMIT + 1),
        "the 1,000,201-byte record": _event(1_000_201),
        "five megabytes": _event(5_000_000),
        # Not JSON, under the input limit: dead-lettered whole when it fits the producer's
        # limit with its headers, truncated when only the headers push it over.
        "dead letter under the produce limit": b"{" * (PRODUCE_LIMIT - 2_000),
        "dead letter over the produce limit": b"{" * (PRODUCE_LIMIT - 10),
    }
    _produce(kafka_bootstrap, service_setup.input_topic, [(b"k00", v, None) for v in big.values()])
    produce_events(service_setup.input_topic, good[40:])
    total = len(good) + len(big)
    wait_until(settled(service, total), 90, "every record to be consumed and settled")
    assert service.process.poll() is None, "the service must not stop on a large record"

    inputs = consume_all(service_setup.input_topic, timeout=30)
    by_offset = {(r.partition, r.offset): r for r in inputs}
    dead = consume_all(service_setup.dead_letter_topic, timeout=30)
    sources = {}
    for record in dead:
        origin = (int(record.headers["source_partition"]), int(record.headers["source_offset"]))
        sources[by_offset[origin].value] = record
        assert record_size(record.value, record.key, list(record.headers.items())) <= PRODUCE_LIMIT
    assert big["at the input limit"] not in sources, "a record at the limit is processed"
    for name in ("one byte over the input limit", "the 1,000,201-byte record", "five megabytes"):
        record = sources[big[name]]
        assert record.headers["reason"] == b"oversized", name
        assert record.headers["truncated"] == b"value", name
    whole = sources[big["dead letter under the produce limit"]]
    assert whole.headers["reason"] == b"not_json" and "truncated" not in whole.headers
    assert whole.value == big["dead letter under the produce limit"]
    cut = sources[big["dead letter over the produce limit"]]
    assert cut.headers["reason"] == b"not_json" and cut.headers["truncated"] == b"value"
    for name in ("five megabytes", "dead letter over the produce limit"):
        original, record = big[name], sources[big[name]]
        assert record.headers["original_size"] == str(len(original)).encode()
        assert record.headers["original_sha256"] == hashlib.sha256(original).hexdigest().encode()
        assert original.startswith(record.value) and record.key == b"k00"
    assert len(dead) == len(big) - 1

    metrics = service.metrics()
    assert metrics["sd_events_in_total"] == total
    assert metrics["sd_events_processed_total"] == len(good) + 1
    ends = partition_ends(inputs)
    wait_until(
        lambda: committed_at(
            kafka_bootstrap, service_setup.group_id, service_setup.input_topic, ends
        ),
        30,
        "the input to be committed past the large records",
    )


def test_input_headers_reach_the_dead_letter_under_a_prefix(
    start_service, service_setup, consume_all, kafka_bootstrap
) -> None:
    service = start_service()
    headers = [("reason", b"all fine"), ("trace-id", b"t-42")]
    _produce(kafka_bootstrap, service_setup.input_topic, [(b"k01", b"not json", headers)])
    wait_until(settled(service, 1), 60, "the record to be dead-lettered")
    (record,) = consume_all(service_setup.dead_letter_topic)
    assert record.headers["reason"] == b"not_json", "an input header cannot spoof the reason"
    assert record.headers["input.reason"] == b"all fine"
    assert record.headers["input.trace-id"] == b"t-42"


@pytest.mark.parametrize(
    ("kafka", "bound_s"),
    [
        # The broker refuses the SASL handshake: librdkafka reports an authentication error.
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "detector",
                "sasl_password": "secret",
            },
            30,
        ),
        # No mechanism: librdkafka's default, GSSAPI, is not in this build.
        ({"security_protocol": "SASL_PLAINTEXT"}, 30),
        # An SSL client on a plaintext listener only times out: the TCP-level answer tells.
        ({"security_protocol": "SSL"}, 90),
    ],
    ids=["sasl-plain", "sasl-default-mechanism", "ssl"],
)
def test_a_security_mismatch_ends_the_service_naming_the_setting(
    start_service, kafka: dict[str, Any], bound_s: float
) -> None:
    started = time.monotonic()
    service = start_service(wait=False, kafka=kafka)
    assert service.process.wait(bound_s) in (1, 2)
    assert time.monotonic() - started < bound_s
    failures = [e for e in service.log_events() if e.get("event") == "service failed"]
    assert failures, service.log()
    assert "kafka.security_protocol" in failures[0]["error"]
    assert "secret" not in service.log()
