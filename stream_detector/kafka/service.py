"""`stream-detector run`: consume input topics, detect, publish alerts and dead letters.

The loop is: consume a batch -> Detector.process_messages -> produce its alerts and dead letters ->
commit the input offsets of every batch whose output the broker has acknowledged. Offsets are
never committed ahead of their output (at-least-once; or, with processing_guarantee =
"exactly_once", each batch's output and offsets go in one Kafka transaction, and so does a
state checkpoint when one is due).

Faults are sorted into two kinds: ones that heal with time (a broker that is down or restarting,
a topic briefly unknown) are waited out with a log line, and ones a person must fix (bad
credentials, missing topics, an unusable model) end the process non-zero with a message naming
the setting to change.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource

from stream_detector.config import ConfigError, Settings
from stream_detector.detector.artefact import ArtefactError
from stream_detector.detector.facade import load_detector
from stream_detector.kafka.changelog import KafkaChangelogStore
from stream_detector.kafka.delivery import DeliveryFailed, DeliveryTracker, OutRecord, Partition
from stream_detector.kafka.errors import HandshakeWatch, accepting_servers, fatal_message
from stream_detector.kafka.health import HealthState, StatusServer
from stream_detector.kafka.partitions import EncodedCheckpoints, open_partition_state
from stream_detector.kafka.records import ConsumedBatch, alert_record, dead_letter_record
from stream_detector.kafka.settings import (
    admin_config,
    check_topic_limits,
    consumer_config,
    producer_config,
    redact,
    transactional_id,
)
from stream_detector.kafka.telemetry import ServiceMetrics

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1  # a broker-side problem to fix (auth, topics) or output that could not be delivered
EXIT_CONFIG = 2  # the configuration or the model artefact is unusable

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 30.0
_LAG_EVERY_S = 1.0
_TXN_TIMEOUT_S = 30.0
_Client = TypeVar("_Client")

# A broker that accepts connections but fails the handshake this long is mismatched, not down.
# librdkafka gives up on one SSL handshake after 30 s (socket.connection.setup.timeout.ms).
_HANDSHAKE_GIVE_UP_S = 30.0


class FatalServiceError(Exception):
    """The service cannot go on; the message says what to fix."""


def run_service(settings: Settings, *, stop_event: threading.Event | None = None) -> int:
    """Run until stopped (SIGTERM/SIGINT or `stop_event`); returns the process exit code."""
    stop = stop_event if stop_event is not None else threading.Event()
    with _stop_on_signals(stop):
        try:
            service = KafkaService(settings, stop)
        except (ConfigError, ArtefactError) as exc:
            log.error("cannot start the service", error=str(exc))
            return EXIT_CONFIG
        _freeze_startup_objects()
        return service.run()


def _freeze_startup_objects() -> None:
    """Move everything alive now (torch's modules and classes, the model, the settings) out of
    the cyclic garbage collector's reach: they live as long as the process, yet every full
    collection walked them again. In-flight output records promoted to the oldest generation
    set off a full collection every ~0.4 s at 60k events/s, each a 150 ms pause of the loop
    (p99 event -> alert 300 ms; 132 ms once frozen, measured by `stream-detector bench`)."""
    gc.collect()  # garbage already there would otherwise be frozen for good
    gc.freeze()


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop`; handlers can only be installed from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _create_client(factory: Callable[[dict[str, Any]], _Client], conf: dict[str, Any]) -> _Client:
    """A librdkafka client, or FatalServiceError naming the settings when librdkafka refuses
    the configuration (e.g. a SASL mechanism this build lacks: GSSAPI is librdkafka's default)."""
    try:
        return factory(conf)
    except KafkaException as exc:
        raise FatalServiceError(
            f"cannot create the Kafka clients: {exc.args[0].str()}; check kafka.security_protocol "
            "and kafka.sasl_mechanism, and kafka.extra (passed to librdkafka as is)"
        ) from None


class KafkaService:
    """One consumer-group member: owns the consumer, the producer and the detector."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.stop = stop
        self.metrics = ServiceMetrics()
        self.health = HealthState()
        self.tracker = DeliveryTracker()
        self.detector = load_detector(settings)
        self.health.model_loaded = True
        self.metrics.model_info.labels(model_version=self.detector.model_version).set(1)
        self.source = f"stream-detector/{self.kafka.group_id}"
        self._exactly_once = self.kafka.processing_guarantee == "exactly_once"
        self._fatal: str | None = None
        self._assigned: set[Partition] = set()
        # Offsets released by the tracker: what this member may commit, per owned partition.
        self._released: dict[Partition, int] = {}
        self._stop_deadline: float | None = None
        self._failing = False  # on the way out after a fatal error: commit nothing more
        self._last_lag = 0.0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        # Per-partition engine state (None: state.store = "none"), and what it reflects: the
        # next offset to consume of every owned partition, as far as the detector has seen.
        self.state = open_partition_state(settings, self.detector)
        self._positions: dict[Partition, int] = {}
        # Restored partitions' checkpoint offsets, until a fetch response's high watermark shows
        # the offset lies within the log.
        self._unverified: dict[Partition, int] = {}
        self._last_checkpoint = time.monotonic()
        # A checkpoint being written in the background, with the offsets it reflects.
        self._writing: tuple[dict[Partition, int], Future[int]] | None = None
        # With exactly_once, checkpoints go into the transactions, through the changelog store
        # (settings refuse exactly_once with the local store, which cannot join a transaction).
        store = self.state.store if self.state is not None else None
        self._txn_changelog = (
            store if self._exactly_once and isinstance(store, KafkaChangelogStore) else None
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        port = self.settings.observability.http_port
        server = StatusServer(self.metrics.registry, self.health, port) if port is not None else None
        if server is not None:
            server.start()
        try:
            if not self._wait_for_broker():
                log.info("service stopped before the broker was reached")
                return EXIT_OK
            self._start_clients()
            self._loop()
            return self._shutdown()
        except ConfigError as exc:  # settings that the broker's topics cannot accommodate
            log.error("cannot start the service", error=str(exc))
            return EXIT_CONFIG
        except (FatalServiceError, DeliveryFailed) as exc:
            self.health.failed = str(exc)
            self._failing = True
            log.error(
                "service failed",
                error=str(exc),
                note="input past the last acknowledged output was not committed; a restart "
                "processes it again",
            )
            self._close_clients()
            return EXIT_FATAL
        finally:
            if server is not None:
                server.stop()

    def _wait_for_broker(self) -> bool:
        """Retry with backoff until the broker answers and the topics exist; False if stopped.

        A broker that is down is waited for; one that accepts connections but fails the
        handshake or authentication ends the service (`errors.HandshakeWatch`)."""
        admin = _create_client(
            AdminClient, {**admin_config(self.kafka), "error_cb": self._on_client_error}
        )
        handshake = HandshakeWatch(_HANDSHAKE_GIVE_UP_S)
        delay = _BACKOFF_START_S
        while not self.stop.is_set():
            self._raise_if_fatal()
            try:
                metadata = admin.list_topics(timeout=5.0)
            except KafkaException as exc:
                admin.poll(0)  # authentication and SSL errors only reach error_cb from here
                self._raise_if_fatal()
                error = exc.args[0].str()
                accepting = accepting_servers(self.kafka.bootstrap_servers)
                if handshake.failed(bool(accepting)):
                    raise FatalServiceError(handshake.message(self.kafka.bootstrap_servers, error))
                log.warning(
                    "kafka broker accepts connections but the handshake failed; retrying"
                    if accepting
                    else "kafka broker unreachable; retrying",
                    bootstrap_servers=self.kafka.bootstrap_servers,
                    error=error,
                    retry_in_s=delay,
                )
                self.stop.wait(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            self._check_topics(metadata.topics)
            self._check_topic_limits(admin)
            return True
        return False

    def _check_topic_limits(self, admin: AdminClient) -> None:
        """The dead-letter and input topics' max.message.bytes against the size settings. A
        broker that does not report them (Tansu reports no topic configs) is not checked."""
        topics = [self.kafka.dead_letter_topic, *self.kafka.input_topics]
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
        check_topic_limits(self.kafka, limits)

    def _check_topics(self, present: dict[str, object]) -> None:
        wanted = {topic: "kafka.input_topics" for topic in self.kafka.input_topics}
        wanted[self.kafka.alert_topic] = "kafka.alert_topic"
        wanted[self.kafka.dead_letter_topic] = "kafka.dead_letter_topic"
        if self.settings.state.store == "kafka":
            wanted[self.settings.state.changelog_topic] = "state.changelog_topic"
        missing = [
            f"{topic!r} ({setting})"
            for topic, setting in wanted.items()
            if topic not in present or getattr(present[topic], "error", None) is not None
        ]
        if missing:
            raise FatalServiceError(
                f"topic(s) {', '.join(missing)} do not exist on {self.kafka.bootstrap_servers}: "
                "create them, or point those settings at existing topics"
            )

    def _start_clients(self) -> None:
        consumer_conf = {
            **consumer_config(self.kafka),
            "error_cb": self._on_client_error,
            "on_commit": self._on_commit,
        }
        txn_id = transactional_id(self.kafka) if self._exactly_once else None
        producer_conf = {
            **producer_config(self.kafka, txn_id),
            "error_cb": self._on_client_error,
        }
        log.info(
            "starting kafka clients",
            consumer=redact(consumer_config(self.kafka)),
            producer=redact(producer_config(self.kafka, txn_id)),
            processing_guarantee=self.kafka.processing_guarantee,
        )
        self._producer = _create_client(Producer, producer_conf)
        if self._exactly_once:
            try:
                self._producer.init_transactions(_TXN_TIMEOUT_S)
            except KafkaException as exc:
                raise FatalServiceError(
                    f"cannot start the transactional producer: {exc.args[0].str()}"
                ) from None
        self._consumer = _create_client(Consumer, consumer_conf)
        self._consumer.subscribe(
            list(self.kafka.input_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _loop(self) -> None:
        consumer = self._require_consumer()
        while not self.stop.is_set():
            self._raise_if_fatal()
            messages = consumer.consume(self.kafka.batch_size, self.kafka.batch_timeout_s)
            self.health.heartbeat()
            data = self._data_messages(messages)
            if self._unverified:
                data = self._check_restored_positions(data)
            if data:
                self._process(data)
            self._service_producer(0.0)
            if self.state is None:
                self._commit_released(asynchronous=True)
            elif self._exactly_once:
                if self._checkpoint_due():  # no batch took it: a transaction of its own
                    self._checkpoint_transaction(self._assigned)
            else:
                self._checkpoint_if_due()
            self._update_lag()

    def _shutdown(self) -> int:
        """Finish what was produced, commit it, leave the group; within shutdown_timeout_s."""
        self._stop_deadline = time.monotonic() + self.kafka.shutdown_timeout_s
        log.info("stopping: draining produced messages", unacknowledged=self.tracker.unsettled)
        drained = self._drain()
        self._checkpoint_now(self._assigned)
        self._commit_released(asynchronous=False)
        self._close_clients()
        log.info(
            "service stopped",
            drained=drained,
            **self.metrics.totals(),
            produced_acknowledged=self.tracker.delivered,
        )
        if not drained:
            log.error(
                "shutdown deadline passed with messages unacknowledged; their input offsets were "
                "not committed and will be processed again on restart",
                unacknowledged=self.tracker.unsettled,
                shutdown_timeout_s=self.kafka.shutdown_timeout_s,
            )
            return EXIT_FATAL
        return EXIT_OK

    def _close_clients(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()  # leaves the group; runs on_revoke
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed", error=str(exc))
            finally:
                self._consumer = None
        self._producer = None
        if self.state is not None:
            self.state.close()

    # -- one batch -------------------------------------------------------------------------------

    def _data_messages(self, messages: list[Message]) -> list[Message]:
        """Split off error events (rare), acting on each; returns the data messages."""
        errors = [m for m in messages if m.error() is not None]
        if not errors:
            return messages
        for message in errors:
            self._on_consume_error(message.error(), message)
        return [m for m in messages if m.error() is None]

    def _process(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        consumed = ConsumedBatch.from_messages(messages)
        result = self.detector.process_messages(
            consumed.payloads,
            consumed.keys,
            consumed.broker_ts_ms,
            streams=consumed.stream_codes(),
        )
        offsets = consumed.next_offsets()
        self._positions.update(offsets)
        if self.state is not None:
            events = result.decoded.batch
            self.state.observe(
                consumed.partition_list, consumed.partition_ids[events.index], events.keys
            )
        seq = -1 if self._exactly_once else self.tracker.open_batch(offsets)
        records = [alert_record(a, self.kafka.alert_topic, self.source, seq) for a in result.alerts]
        records += [
            dead_letter_record(
                r, messages[r.index], self.kafka.dead_letter_topic, seq, self.kafka.max_message_bytes
            )
            for r in result.decoded.rejects
        ]
        if self._exactly_once:
            due = self._txn_changelog is not None and self._checkpoint_due()
            checkpoint = self._encode(self._assigned) if due else None
            self._produce_transaction(records, offsets, checkpoint)
        else:
            for record in records:
                self._produce(record)
            self.tracker.seal(seq)
        self.metrics.record_batch(len(messages), result, self.detector, time.perf_counter() - started)
        for alert in result.alerts:
            log.info(
                "alert",
                kind=alert.kind,
                key=alert.key,
                alert_id=alert.alert_id,
                severity=alert.severity,
                score=round(alert.score, 4),
                threshold=round(alert.threshold, 4),
            )

    def _produce(self, record: OutRecord) -> None:
        """Hand one record to the producer, waiting (polling) while max_in_flight is reached."""
        producer = self._require_producer()
        while True:
            if self.tracker.in_flight >= self.kafka.max_in_flight:
                self._wait_for_acks()
                continue
            try:
                producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=self.tracker.callback_for(record),
                )
            except BufferError:
                self._wait_for_acks()
                continue
            except KafkaException as exc:
                raise FatalServiceError(
                    f"cannot produce to topic {record.topic!r}: {exc.args[0].str()}"
                ) from None
            self.tracker.sent(record)
            return

    def _wait_for_acks(self) -> None:
        self._require_producer().poll(0.1)
        self.tracker.raise_if_failed()
        self._raise_if_fatal()
        if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
            raise FatalServiceError(
                "shutdown deadline passed while waiting for the broker to acknowledge output; "
                "raise kafka.shutdown_timeout_s or check the broker"
            )

    def _service_producer(self, timeout_s: float) -> None:
        """Serve delivery callbacks, re-produce what failed with a healable error."""
        self._require_producer().poll(timeout_s)
        for record in self.tracker.take_retries():
            self.metrics.delivery_retries.inc()
            self._produce(record)
        self.tracker.raise_if_failed()
        self.metrics.in_flight.set(self.tracker.in_flight)

    def _drain(self) -> bool:
        """Wait until everything produced is acknowledged (or the stop deadline passes)."""
        deadline = self._stop_deadline or time.monotonic() + self.kafka.shutdown_timeout_s
        while self.tracker.unsettled and time.monotonic() < deadline:
            self._service_producer(min(0.1, max(deadline - time.monotonic(), 0.0)))
        self._service_producer(0.0)
        return self.tracker.unsettled == 0

    def _produce_transaction(
        self,
        records: list[OutRecord],
        offsets: dict[Partition, int],
        checkpoint: EncodedCheckpoints | None = None,
    ) -> None:
        """One Kafka transaction per batch: its output, its input offsets and, when one is due,
        the owned partitions' checkpoint, or none of them. Restore reads the changelog
        read_committed, so it never sees a checkpoint whose output was not committed."""
        producer, consumer = self._require_producer(), self._require_consumer()
        try:
            producer.begin_transaction()
            for record in records:
                self._produce(record)
            if checkpoint is not None and self._txn_changelog is not None:
                self._txn_changelog.produce(producer, checkpoint.blobs)
            if offsets:
                producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    consumer.consumer_group_metadata(),
                    _TXN_TIMEOUT_S,
                )
            producer.commit_transaction(_TXN_TIMEOUT_S)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.txn_requires_abort():
                producer.abort_transaction(_TXN_TIMEOUT_S)
            raise FatalServiceError(
                f"transaction failed ({error.str()}); nothing of this batch was committed, a "
                "restart processes it again from the last committed offsets"
            ) from None
        if offsets:
            self.metrics.commits.inc()
        if checkpoint is not None and self.state is not None:
            self.state.written(checkpoint)
        self._service_producer(0.0)

    def _encode(self, partitions: Collection[Partition]) -> EncodedCheckpoints | None:
        """The partitions' checkpoints at their positions, encoded here on the loop (for a
        transaction); None when none of them moved since its last checkpoint."""
        if self.state is None:
            return None
        encoded = self.state.encode_now(
            {p: o for p, o in self._positions.items() if p in partitions}
        )
        return encoded if encoded.blobs else None

    def _checkpoint_transaction(self, partitions: Collection[Partition]) -> None:
        """exactly_once without a batch to ride on (idle interval, revoke, shutdown): a
        transaction holding only the checkpoint. Every earlier batch's transaction, offsets
        included, is committed already, so it reflects committed output only."""
        if self._txn_changelog is None or self._failing:
            return
        encoded = self._encode(partitions)
        if encoded is not None:
            self._produce_transaction([], {}, encoded)

    # -- offsets and rebalances ------------------------------------------------------------------

    def _commit_released(self, *, asynchronous: bool, only: set[Partition] | None = None) -> None:
        """Commit what the tracker released: new offsets normally, all owned ones when leaving
        (so a failed asynchronous commit earlier cannot leave a partition behind)."""
        if self._exactly_once or self._consumer is None:
            return
        fresh = self._collect_released()
        chosen = fresh if asynchronous else self._released
        if only is not None:
            chosen = {tp: o for tp, o in self._released.items() if tp in only}
        self._commit(chosen, asynchronous=asynchronous)

    def _collect_released(self) -> dict[Partition, int]:
        """Take the offsets the tracker released (fully acknowledged batches) of owned
        partitions into `_released`; returns the fresh ones."""
        fresh = {
            (tp.topic, tp.partition): tp.offset
            for tp in self.tracker.ready_offsets()
            if (tp.topic, tp.partition) in self._assigned
        }
        self._released.update(fresh)
        return fresh

    def _commit(self, chosen: dict[Partition, int], *, asynchronous: bool) -> None:
        if self._exactly_once or self._consumer is None or not chosen:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in chosen.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
            self.metrics.commits.inc()
        except KafkaException as exc:
            # The offsets stay released and are committed again at the next chance; if this
            # member is leaving, the new owner re-processes them (duplicates, never a loss).
            log.warning("offset commit failed", error=exc.args[0].str(), offsets=len(offsets))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        added = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned |= added
        self.health.assigned = bool(self._assigned)
        log.info("partitions assigned", added=sorted(added), assigned=len(self._assigned))
        if self.state is not None:
            self._restore(consumer, partitions)

    def _restore(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Restore the partitions' checkpoints and start consuming each restored one at its
        checkpoint's offset, so state and position agree: no event counted twice into a window,
        none skipped. The others start at their committed offset (OFFSET_INVALID)."""
        assert self.state is not None
        resume = self.state.restore({(tp.topic, tp.partition) for tp in partitions})
        if not resume:
            return  # the client assigns at the committed offsets once this callback returns
        positioned = [
            TopicPartition(
                tp.topic, tp.partition, resume.get((tp.topic, tp.partition), OFFSET_INVALID)
            )
            for tp in partitions
        ]
        if "cooperative" in self.kafka.partition_assignment_strategy:
            consumer.incremental_assign(positioned)
        else:
            consumer.assign(positioned)
        self._positions.update(resume)
        self._unverified.update(resume)

    def _check_restored_positions(self, messages: list[Message]) -> list[Message]:
        """A checkpoint's offset past the end of its partition (the broker lost its data, or the
        topic was deleted and re-created) would leave the partition waiting silently for
        offsets that may never come. Once a fetch response gave a restored partition's high
        watermark (list-offsets is not used: some brokers answer it wrongly), a position beyond
        it drops the partition's restored state and reads it from the beginning, cold. Returns
        `messages` without those partitions' (they are fetched again from the start)."""
        consumer = self._require_consumer()
        beyond: set[Partition] = set()
        for partition, offset in list(self._unverified.items()):
            _low, high = consumer.get_watermark_offsets(TopicPartition(*partition), cached=True)
            if high < 0:
                continue  # no fetch response for it yet
            del self._unverified[partition]
            if offset > high:
                beyond.add(partition)
                log.warning(
                    "checkpoint offset is past the end of its partition; dropping its state and "
                    "reading the partition from the beginning",
                    topic=partition[0],
                    partition=partition[1],
                    checkpoint_offset=offset,
                    log_end=high,
                    probably="the broker lost the partition's data, or the topic was deleted and "
                    "re-created, after the checkpoint was written",
                )
        if not beyond:
            return messages
        if self.state is not None:
            self.state.drop(beyond)
        for topic, number in beyond:
            self._positions.pop((topic, number), None)
            consumer.seek(TopicPartition(topic, number, OFFSET_BEGINNING))
        # Rare (a broken log); a per-message filter is fine here.
        return [m for m in messages if (m.topic(), m.partition()) not in beyond]

    def _checkpoint_if_due(self) -> None:
        """Every checkpoint_interval_s: snapshot here, encode and write in the background, and
        commit its offsets at a later turn, once written; one write at a time."""
        if self.state is None:
            return
        if self._writing is not None:
            if not self._writing[1].done():
                return
            self._commit_checkpointed()
        if self._checkpoint_due():
            self._writing = self._checkpoint(self._assigned)

    def _checkpoint_due(self) -> bool:
        """Whether state.checkpoint_interval_s has passed; if so, the next interval starts."""
        now = time.monotonic()
        if now - self._last_checkpoint < self.settings.state.checkpoint_interval_s:
            return False
        self._last_checkpoint = now
        return True

    def _commit_checkpointed(self) -> None:
        """Wait for the background checkpoint, then commit the offsets it reflects (also when
        the write failed: restores seek to their checkpoint's own offset, so a commit ahead of
        the previous checkpoint costs re-processing, while never committing would cost more)."""
        if self._writing is None:
            return
        (positions, written), self._writing = self._writing, None
        written.result()
        self._collect_released()  # their batches are acknowledged: let the tracker forget them
        owned = {p: o for p, o in positions.items() if p in self._assigned}
        self._commit(owned, asynchronous=False)

    def _checkpoint_now(self, partitions: set[Partition]) -> None:
        """Checkpoint and wait for the write (revoke, shutdown): the partitions leave next."""
        if self._exactly_once:
            self._checkpoint_transaction(partitions)
            return
        self._commit_checkpointed()
        started = self._checkpoint(partitions, wait=False)
        if started is not None:
            started[1].result()

    def _checkpoint(
        self, partitions: set[Partition], *, wait: bool = True
    ) -> tuple[dict[Partition, int], Future[int]] | None:
        """Checkpoint the partitions at their positions in the background (at-least-once), once
        every output up to there is acknowledged: a checkpoint ahead of its output would lose
        those alerts on restore.

        With a state store, offsets are committed only right after a checkpoint (the callers do
        it): a committed offset ahead of a partition's checkpoint would, after a crash, leave the
        events in between in neither, and a partition with no checkpoint yet would resume cold
        in mid-stream. Returns the positions and the write's future, or None when no
        checkpoint could be taken (output unacknowledged)."""
        if self.state is None or self._failing:
            return None
        if self.tracker.unsettled:
            if not (wait and self._drain()):
                log.warning("checkpoint skipped: output still unacknowledged",
                            unacknowledged=self.tracker.unsettled)
                return None
        positions = {p: o for p, o in self._positions.items() if p in partitions}
        return positions, self.state.checkpoint(positions)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before giving partitions away: get their output acknowledged and their offsets in."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if self._producer is not None and not self._exactly_once and not self._failing:
            if not self._drain():
                log.warning("revoking with output unacknowledged; it will be processed again",
                            unacknowledged=self.tracker.unsettled)
            self._checkpoint_now(revoked)  # drained just above, as far as it could be
            self._commit_released(asynchronous=False, only=revoked)
        elif self._exactly_once and not self._failing:
            try:
                self._checkpoint_now(revoked)
            except FatalServiceError as exc:
                # Raising inside the rebalance callback would lose it; the loop raises it.
                self._fatal = self._fatal or str(exc)
        self._give_up(revoked)
        log.info("partitions revoked", revoked=sorted(revoked), assigned=len(self._assigned))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost partitions already belong to someone else: committing for them would be wrong."""
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._give_up(lost)
        log.warning("partitions lost; their uncommitted input will be processed again by the new "
                    "owner", lost=sorted(lost))

    def _give_up(self, partitions: set[Partition]) -> None:
        # With a state store the partitions' keys are dropped (the new owner restores them);
        # without one they age out through window.idle_ttl_s and window.max_keys.
        self.tracker.forget(partitions)
        if self.state is not None:
            self.state.drop(partitions)
        for partition in partitions:
            self._released.pop(partition, None)
            self._positions.pop(partition, None)
            self._unverified.pop(partition, None)
            self.metrics.drop_partition(*partition)
        self._assigned -= partitions
        self.health.assigned = bool(self._assigned)

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < _LAG_EVERY_S or not self._assigned:
            return
        self._last_lag = now
        consumer = self._require_consumer()
        try:
            positions = consumer.position([TopicPartition(t, p) for t, p in self._assigned])
        except KafkaException:
            return
        for tp in positions:
            if tp.offset < 0:
                continue
            # The cached high watermark comes from fetch responses; list-offsets is not used
            # because some brokers (Tansu) answer it wrongly.
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                self.metrics.set_lag(tp.topic, tp.partition, max(high - tp.offset, 0))

    # -- errors ----------------------------------------------------------------------------------

    def _note_if_fatal(self, error: KafkaError) -> bool:
        """Remember an error no retry can fix; the loop raises it at the next turn (callbacks
        run inside librdkafka calls, where raising would lose the message)."""
        message = fatal_message(error)
        if message is None:
            return False
        if self._fatal is None:
            self._fatal = message
        return True

    def _on_client_error(self, error: KafkaError) -> None:
        if self._note_if_fatal(error):
            return
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("all kafka brokers are down; reconnecting",
                        bootstrap_servers=self.kafka.bootstrap_servers)
        else:
            log.debug("kafka client error", error=error.str())

    def _on_consume_error(self, error: KafkaError, message: Message) -> None:
        if self._note_if_fatal(error):
            return
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume error", error=error.str(), topic=message.topic(),
                        partition=message.partition())

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            log.warning("offset commit failed", error=error.str(), partitions=len(partitions))

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise FatalServiceError(self._fatal)

    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("consumer not started")
        return self._consumer

    def _require_producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("producer not started")
        return self._producer
