"""The Kafka service's broker-free parts: commit tracking and policy, batch offsets, client
settings, HTTP.

The delivery tracker and the per-partition offsets are checked with hypothesis against naive
reference implementations; the rest with concrete cases.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from stream_detector.aggregate.streams import partition_stream
from stream_detector.config import KafkaConfig, load_settings
from stream_detector.engine.types import Reject
from stream_detector.kafka.checkpoints import CheckpointInterval
from stream_detector.kafka.clients import Clients
from stream_detector.kafka.commit import AtLeastOnce, Transactional, commit_policy
from stream_detector.kafka.delivery import (
    MAX_DELIVERY_ATTEMPTS,
    DeliveryFailed,
    DeliveryTracker,
    OutRecord,
)
from stream_detector.kafka.faults import ClientFaults
from stream_detector.kafka.health import HealthState, StatusServer
from stream_detector.kafka.output import Output
from stream_detector.kafka.ownership import Ownership
from stream_detector.kafka.records import ConsumedBatch, dead_letter_record
from stream_detector.kafka.recovery import Recovery
from stream_detector.kafka.settings import consumer_config, producer_config, redact
from stream_detector.kafka.telemetry import ServiceMetrics

TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)
TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)

# -- DeliveryTracker against a naive model ---------------------------------------------------------

batch_offsets = st.dictionaries(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2)), st.integers(1, 1000), max_size=3
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict], list[int], list[int], list[int]]:
    """Batches (offsets), records per batch, the order acks arrive in, and which records fail
    once with a healable error before succeeding."""
    offsets = draw(st.lists(batch_offsets, min_size=1, max_size=6))
    sizes = draw(st.lists(st.integers(0, 3), min_size=len(offsets), max_size=len(offsets)))
    n_records = sum(sizes)
    order = draw(st.permutations(list(range(n_records))))
    flaky = draw(st.lists(st.integers(0, max(n_records - 1, 0)), max_size=3, unique=True))
    return offsets, sizes, order, flaky if n_records else []


def _naive_released(offsets: list[dict], sizes: list[int], acked: set[int]) -> dict:
    """Merge offsets of the longest prefix of batches whose records are all acknowledged."""
    released: dict = {}
    first = 0
    for batch, size in zip(offsets, sizes, strict=True):
        if not all(r in acked for r in range(first, first + size)):
            break
        released.update(batch)
        first += size
    return released


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_offsets_are_released_in_batch_order_once_all_output_is_acknowledged(scenario) -> None:
    offsets, sizes, order, flaky = scenario
    tracker = DeliveryTracker()
    callbacks = []
    for batch, size in zip(offsets, sizes, strict=True):
        seq = tracker.open_batch(batch)
        for _ in range(size):
            record = OutRecord("alerts", b"v", b"k", batch=seq)
            callbacks.append(tracker.callback_for(record))
            tracker.sent(record)
        tracker.seal(seq)

    released: dict = {}
    acked: set[int] = set()
    for record_no in order:
        if record_no in flaky:
            callbacks[record_no](TIMED_OUT, None)
            (retry,) = tracker.take_retries()
            callback = tracker.callback_for(retry)
            tracker.sent(retry)
            released.update({(tp.topic, tp.partition): tp.offset for tp in tracker.ready_offsets()})
            assert released == _naive_released(offsets, sizes, acked)
            callback(None, None)
        else:
            callbacks[record_no](None, None)
        acked.add(record_no)
        released.update({(tp.topic, tp.partition): tp.offset for tp in tracker.ready_offsets()})
        assert released == _naive_released(offsets, sizes, acked)
    tracker.raise_if_failed()
    assert tracker.in_flight == 0 and tracker.unsettled == 0
    assert tracker.delivered == len(order)


def test_a_batch_without_output_waits_for_earlier_batches() -> None:
    tracker = DeliveryTracker()
    first = tracker.open_batch({("in", 0): 10})
    record = OutRecord("alerts", b"v", b"k", batch=first)
    callback = tracker.callback_for(record)
    tracker.sent(record)
    tracker.seal(first)
    tracker.seal(tracker.open_batch({("in", 0): 20, ("in", 1): 5}))
    assert tracker.ready_offsets() == []
    callback(None, None)
    assert {(tp.topic, tp.partition, tp.offset) for tp in tracker.ready_offsets()} == {
        ("in", 0, 20),
        ("in", 1, 5),
    }


def test_an_unsealed_batch_is_not_released() -> None:
    tracker = DeliveryTracker()
    tracker.open_batch({("in", 0): 10})
    assert tracker.ready_offsets() == []


def test_a_permanent_delivery_error_fails_and_holds_the_offsets_back() -> None:
    tracker = DeliveryTracker()
    seq = tracker.open_batch({("in", 0): 10})
    record = OutRecord("events.dlq", b"v", None, batch=seq)
    callback = tracker.callback_for(record)
    tracker.sent(record)
    tracker.seal(seq)
    callback(TOO_LARGE, None)
    with pytest.raises(DeliveryFailed, match="events.dlq"):
        tracker.raise_if_failed()
    assert tracker.take_retries() == [] and tracker.ready_offsets() == []


def test_healable_errors_are_retried_a_bounded_number_of_times() -> None:
    tracker = DeliveryTracker()
    record = OutRecord("alerts", b"v", b"k", batch=tracker.open_batch({("in", 0): 1}))
    for attempt in range(1, MAX_DELIVERY_ATTEMPTS):
        callback = tracker.callback_for(record)
        tracker.sent(record)
        callback(TIMED_OUT, None)
        assert tracker.take_retries() == [record] and record.attempt == attempt
        tracker.raise_if_failed()
    callback = tracker.callback_for(record)
    tracker.sent(record)
    callback(TIMED_OUT, None)
    assert tracker.take_retries() == []
    with pytest.raises(DeliveryFailed, match=f"after {MAX_DELIVERY_ATTEMPTS} attempt"):
        tracker.raise_if_failed()


def test_forgotten_partitions_are_never_committed() -> None:
    tracker = DeliveryTracker()
    tracker.seal(tracker.open_batch({("in", 0): 10, ("in", 1): 7}))
    tracker.forget({("in", 0)})
    assert [(tp.partition, tp.offset) for tp in tracker.ready_offsets()] == [(1, 7)]


# -- offsets of a consumed batch -------------------------------------------------------------------


def _messages(rows: list[tuple[str, int, int]]) -> list[Message]:
    return [
        Message(topic=t, partition=p, offset=o, key=b"k", value=b"{}", timestamp=(1, 1000 + o))
        for t, p, o in rows
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["x", "y.z", "w"]), st.integers(0, 40), st.integers(0, 10**12)),
        max_size=60,
    )
)
def test_next_offsets_is_one_past_the_highest_offset_per_partition(rows) -> None:
    expected: dict = {}
    for topic, partition, offset in rows:
        expected[(topic, partition)] = max(expected.get((topic, partition), -1), offset + 1)
    batch = ConsumedBatch.from_messages(_messages(rows))
    assert batch.next_offsets() == expected
    # The shared lookup the state bookkeeping uses: each message's own (topic, partition).
    assert [batch.partition_list[i] for i in batch.partition_ids] == [(t, p) for t, p, _ in rows]
    assert len(set(batch.partition_list)) == len(batch.partition_list)
    assert batch.stream_codes().tolist() == [partition_stream(t, p) for t, p, _ in rows]


def test_consumed_batch_keeps_payloads_keys_and_broker_times_aligned() -> None:
    messages = _messages([("t", 0, 3), ("t", 1, 9)])
    messages.append(Message(topic="t", partition=0, offset=4, key=None, value=None, timestamp=(1, 7)))
    batch = ConsumedBatch.from_messages(messages)
    assert batch.payloads == [b"{}", b"{}", b""]  # a tombstone becomes an empty payload
    assert batch.keys == [b"k", b"k", None]
    assert batch.broker_ts_ms.tolist() == [1003, 1009, 7]


def test_dead_letter_keeps_the_original_bytes_and_says_why_and_where() -> None:
    (message,) = _messages([("events", 2, 41)])
    record = dead_letter_record(
        Reject(0, "not_json", "not valid JSON"), message, "dlq", 3, KafkaConfig().max_message_bytes
    )
    assert (record.topic, record.value, record.key, record.batch) == ("dlq", b"{}", b"k", 3)
    assert dict(record.headers) == {
        "reason": b"not_json",
        "detail": b"not valid JSON",
        "source_topic": b"events",
        "source_partition": b"2",
        "source_offset": b"41",
    }


# -- the at-least-once commit policy, on fake clients ----------------------------------------------


class _FakeProducer:
    """Accepts every record; poll() acknowledges everything produced so far."""

    def __init__(self) -> None:
        self.pending: list = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None) -> None:
        self.pending.append(on_delivery)

    def poll(self, _timeout: float) -> int:
        pending, self.pending = self.pending, []
        for on_delivery in pending:
            on_delivery(None, None)
        return len(pending)


class _FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[tuple[dict, bool]] = []

    def commit(self, offsets, asynchronous: bool) -> None:
        self.commits.append(({(tp.topic, tp.partition): tp.offset for tp in offsets}, asynchronous))


def _at_least_once(assigned: set) -> tuple[AtLeastOnce, Recovery, ClientFaults, _FakeConsumer]:
    """The policy without a state store, and the recovery that hands partitions over."""
    kafka, tracker, metrics = KafkaConfig(), DeliveryTracker(), ServiceMetrics()
    faults, clients, ownership = ClientFaults(kafka.bootstrap_servers), Clients(), Ownership()
    consumer = _FakeConsumer()
    clients.producer, clients.consumer = _FakeProducer(), consumer
    ownership.assigned |= assigned
    output = Output(kafka, clients, tracker, metrics, faults)
    policy = AtLeastOnce(clients=clients, output=output, tracker=tracker, ownership=ownership,
                         state=None, interval=CheckpointInterval(30.0), metrics=metrics)
    recovery = Recovery(kafka, state=None, ownership=ownership, policy=policy, tracker=tracker,
                        metrics=metrics, health=HealthState(), faults=faults)
    return policy, recovery, faults, consumer


def _consume(policy: AtLeastOnce, offsets: dict, n_records: int) -> None:
    seq = policy.open_batch(offsets)
    records = [OutRecord("alerts", b"v", b"k", batch=seq) for _ in range(n_records)]
    policy.produce_batch(seq, records, offsets)


def test_at_least_once_commits_only_acknowledged_output_and_on_revoke_only_the_revoked() -> None:
    policy, recovery, _faults, consumer = _at_least_once({("in", 0), ("in", 1)})
    _consume(policy, {("in", 0): 5, ("in", 1): 7}, n_records=1)
    policy.between_batches()  # produced, not yet acknowledged: nothing to commit
    assert consumer.commits == []
    _consume(policy, {("in", 0): 9}, n_records=0)
    recovery.on_revoke(None, [TopicPartition("in", 1)])  # acks arrive while draining
    assert consumer.commits == [({("in", 1): 7}, False)]
    policy.finish()  # leaving: every released offset of the partitions still owned
    assert consumer.commits[-1] == ({("in", 0): 9}, False)


def test_what_a_revoke_left_uncommitted_goes_into_the_next_commit() -> None:
    """A revoke commits only the revoked partitions; offsets of the kept ones released by the
    same drain are committed between the next batches, not only at the next revoke or stop."""
    policy, recovery, _faults, consumer = _at_least_once({("in", 0), ("in", 1)})
    _consume(policy, {("in", 0): 5, ("in", 1): 7}, n_records=1)
    recovery.on_revoke(None, [TopicPartition("in", 1)])  # the drain acknowledges both
    assert consumer.commits == [({("in", 1): 7}, False)]
    policy.between_batches()
    assert consumer.commits[-1] == ({("in", 0): 5}, True)
    policy.between_batches()  # nothing new released: nothing committed again
    assert len(consumer.commits) == 2


def test_a_failing_service_commits_nothing_for_revoked_partitions() -> None:
    policy, recovery, faults, consumer = _at_least_once({("in", 0)})
    _consume(policy, {("in", 0): 5}, n_records=1)
    faults.failing = True
    recovery.on_revoke(None, [TopicPartition("in", 0)])
    assert consumer.commits == []
    assert recovery.ownership.assigned == set()


def test_the_commit_policy_follows_the_processing_guarantee() -> None:
    for guarantee, kind in (("at_least_once", AtLeastOnce), ("exactly_once", Transactional)):
        settings = load_settings(
            overrides={"kafka": {"processing_guarantee": guarantee}, "state": {"store": "none"}}
        )
        kafka = settings.kafka
        clients, tracker, metrics = Clients(), DeliveryTracker(), ServiceMetrics()
        faults = ClientFaults(kafka.bootstrap_servers)
        policy = commit_policy(
            settings, clients=clients, output=Output(kafka, clients, tracker, metrics, faults),
            tracker=tracker, ownership=Ownership(), state=None, metrics=metrics, faults=faults,
        )
        assert isinstance(policy, kind)
        assert (policy.transactional_id is not None) == (guarantee == "exactly_once")


# -- client settings -------------------------------------------------------------------------------


def test_client_settings_carry_the_delivery_guarantee_and_security() -> None:
    kafka = KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="hunter2",
        session_timeout_ms=2000,
        extra={"client.id": "sd-1", "linger.ms": "20"},
    )
    consumer = consumer_config(kafka)
    assert consumer["enable.auto.commit"] is False and consumer["enable.auto.offset.store"] is False
    assert consumer["heartbeat.interval.ms"] < consumer["session.timeout.ms"]
    assert consumer["sasl.password"] == "hunter2" and consumer["security.protocol"] == "sasl_ssl"
    producer = producer_config(kafka)
    assert producer["partitioner"] == "murmur2_random" and producer["acks"] == "all"
    assert producer["linger.ms"] == "20", "kafka.extra has the last word"
    assert "transactional.id" not in producer
    transactional = producer_config(kafka, "g-1")
    assert transactional["transactional.id"] == "g-1" and transactional["enable.idempotence"]


def test_secrets_never_reach_a_log_line() -> None:
    conf = producer_config(
        KafkaConfig(sasl_password="hunter2", extra={"ssl.key.password": "s3cret"})
    )
    shown = redact(conf)
    assert "hunter2" not in str(shown) and "s3cret" not in str(shown)
    assert shown["bootstrap.servers"] == conf["bootstrap.servers"]


# -- HTTP endpoints --------------------------------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_endpoints_follow_the_service_state() -> None:
    registry = CollectorRegistry()
    Counter("sd_probe", "A metric to find in the scrape.", registry=registry).inc(3)
    state = HealthState()
    server = StatusServer(registry, state, 0)  # 0 = any free port
    server.start()
    try:
        assert server.port > 0
        assert _get(server.port, "/healthz")[0] == 200
        assert _get(server.port, "/readyz") == (503, "model not loaded\n")
        state.model_loaded = True
        assert _get(server.port, "/readyz") == (503, "no partitions assigned\n")
        state.assigned = True
        assert _get(server.port, "/readyz")[0] == 200
        status, text = _get(server.port, "/metrics")
        assert status == 200 and "sd_probe_total 3.0" in text
        state.failed = "kafka: authentication failed"
        assert _get(server.port, "/healthz")[0] == 503 and _get(server.port, "/readyz")[0] == 503
    finally:
        server.stop()

