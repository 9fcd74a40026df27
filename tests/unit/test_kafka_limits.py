"""Size limits without a broker: dead letters cut to fit, the input's headers kept apart from the
service's, and the size settings checked against each other and against the topics' limits."""

from __future__ import annotations

import hashlib

import pytest
from confluent_kafka import Message, Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.config import ConfigError, KafkaConfig, load_settings
from stream_detector.engine.types import Reject
from stream_detector.kafka.records import INPUT_HEADER_PREFIX, dead_letter_record
from stream_detector.kafka.settings import check_topic_limits, consumer_config, producer_config
from stream_detector.limits import record_size

LIMIT = KafkaConfig().max_message_bytes
REJECT = Reject(0, "not_json", "not valid JSON")


def _dead_letter(
    value: bytes | None, key: bytes | None = b"k", headers: list | None = None, limit: int = LIMIT
):
    message = Message(
        topic="events", partition=1, offset=7, key=key, value=value, headers=headers
    )
    return dead_letter_record(REJECT, message, "dlq", 0, limit)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


def test_input_headers_are_kept_under_a_prefix_and_cannot_spoof_the_reason() -> None:
    record = _dead_letter(b"{", headers=[("reason", b"fine"), ("trace", b"abc"), ("empty", None)])
    headers = dict(record.headers)
    assert headers["reason"] == b"not_json"
    assert [name for name, _ in record.headers].count("reason") == 1
    assert headers[INPUT_HEADER_PREFIX + "reason"] == b"fine"
    assert headers[INPUT_HEADER_PREFIX + "trace"] == b"abc"
    assert headers[INPUT_HEADER_PREFIX + "empty"] is None


def test_a_dead_letter_just_under_the_limit_is_whole() -> None:
    overhead = record_size(None, None, _dead_letter(b"").headers) + 1  # + the key b"k"
    value = b"x" * (LIMIT - overhead)
    record = _dead_letter(value)
    assert record.value == value and "truncated" not in dict(record.headers)


def test_a_dead_letter_just_over_the_limit_is_truncated_with_size_and_digest() -> None:
    overhead = record_size(None, None, _dead_letter(b"").headers) + 1
    value = bytes(range(256)) * ((LIMIT - overhead) // 256 + 1)
    assert len(value) > LIMIT - overhead
    record = _dead_letter(value)
    headers = dict(record.headers)
    assert headers["truncated"] == b"value"
    assert headers["original_size"] == str(len(value)).encode()
    assert headers["original_sha256"] == _sha(value)
    assert headers["reason"] == b"not_json" and headers["source_offset"] == b"7"
    assert record.key == b"k" and value.startswith(record.value)
    assert record_size(record.value, record.key, record.headers) <= LIMIT


@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(st.none(), st.binary(max_size=3000)),
    key=st.one_of(st.none(), st.binary(max_size=3000)),
    headers=st.lists(
        st.tuples(st.text(max_size=20), st.one_of(st.none(), st.binary(max_size=800))),
        max_size=6,
    ),
    limit=st.integers(1500, 5000),
)
def test_every_dead_letter_fits_and_keeps_prefixes_of_the_original(value, key, headers, limit) -> None:
    record = _dead_letter(value, key, headers, limit)
    assert record_size(record.value, record.key, record.headers) <= limit
    got = dict(record.headers)
    assert got["reason"] == b"not_json"
    if "truncated" not in got:
        assert (record.value, record.key) == (value, key)
        return
    cut = got["truncated"].decode().split(",")
    assert set(cut) <= {"value", "key", "headers"} and cut
    assert got["original_size"] == str(len(value or b"")).encode()
    assert got["original_sha256"] == _sha(value or b"")
    assert (value or b"").startswith(record.value or b"")
    assert (record.value == value) == ("value" not in cut)
    assert (key or b"").startswith(record.key or b"") and (record.key == key) == ("key" not in cut)
    copied = [(n, v) for n, v in record.headers if n.startswith(INPUT_HEADER_PREFIX)]
    wanted = [(INPUT_HEADER_PREFIX + n, v) for n, v in headers]
    assert all(header in wanted for header in copied)
    assert (len(copied) == len(wanted)) == ("headers" not in cut)


def test_clients_take_their_size_limits_from_the_settings() -> None:
    kafka = KafkaConfig(max_message_bytes=2_000_000, fetch_max_bytes=8_000_000)
    producer = producer_config(kafka)
    assert producer["message.max.bytes"] == producer["batch.size"] == 2_000_000
    consumer = consumer_config(kafka)
    assert consumer["fetch.max.bytes"] == 8_000_000
    assert int(consumer["receive.message.max.bytes"]) >= 8_000_000 + 512  # librdkafka's minimum
    Producer({**producer, "bootstrap.servers": "127.0.0.1:1"})  # librdkafka accepts them


def test_the_input_limit_must_be_fetchable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"input": {"max_message_bytes": 60_000_000}})
    assert "input.max_message_bytes" in str(info.value)
    assert "kafka.fetch_max_bytes" in str(info.value)
    raised = {"input": {"max_message_bytes": 60_000_000}, "kafka": {"fetch_max_bytes": 70_000_000}}
    assert load_settings(None, raised).kafka.fetch_max_bytes == 70_000_000


@pytest.mark.parametrize(
    ("name", "setting"),
    [("message.max.bytes", "max_message_bytes"), ("fetch.max.bytes", "fetch_max_bytes")],
)
def test_size_properties_in_extra_are_refused_for_the_typed_settings(name, setting) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"kafka": {"extra": {name: "5000000"}}})
    assert name in str(info.value) and f"kafka.{setting}" in str(info.value)


def test_topic_limits_are_checked_against_the_settings() -> None:
    kafka = KafkaConfig(dead_letter_topic="dlq", input_topics=("in",))
    check_topic_limits(kafka, {})  # a broker that reports none: nothing to check
    check_topic_limits(kafka, {"dlq": 1_048_588, "in": 1_048_588})  # Kafka's defaults
    with pytest.raises(ConfigError, match=r"'dlq'.*kafka.max_message_bytes"):
        check_topic_limits(kafka, {"dlq": 500_000})
    with pytest.raises(ConfigError, match=r"'in'.*kafka.fetch_max_bytes"):
        check_topic_limits(kafka, {"in": 100_000_000})
