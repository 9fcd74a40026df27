"""`stream-detector run`: consume input topics, detect, publish alerts and dead letters.

The loop is: consume a batch -> Detector.process_messages -> produce its alerts and dead letters ->
commit the input offsets of every batch whose output the broker has acknowledged. Offsets are
never committed ahead of their output (at-least-once; or, with processing_guarantee =
"exactly_once", each batch's output and offsets go in one Kafka transaction, and so does a
state checkpoint when one is due).

This module runs the loop and the service's lifecycle; the other jobs have modules of their own:
`preflight` (waiting for the broker, checking topics), `output` (back-pressured produce),
`commit` (the commit policy of the processing guarantee), `checkpoints` (when state is
checkpointed), `recovery` (partitions assigned, revoked, lost) and `faults` (client errors).

Faults are sorted into two kinds: ones that heal with time (a broker that is down or restarting,
a topic briefly unknown) are waited out with a log line, and ones a person must fix (bad
credentials, missing topics, an unusable model) end the process non-zero with a message naming
the setting to change.
"""

from __future__ import annotations

import gc
import threading
import time

import structlog
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from stream_detector.config import ConfigError, Settings
from stream_detector.detector.artefact import ArtefactError
from stream_detector.detector.drift import DriftFigures, DriftMonitor, drift_fields
from stream_detector.detector.facade import load_detector
from stream_detector.detector.registry import RegistryError
from stream_detector.engine.types import ScoredWindows
from stream_detector.kafka.clients import Clients, create_client
from stream_detector.kafka.commit import commit_policy
from stream_detector.kafka.delivery import DeliveryFailed, DeliveryTracker
from stream_detector.kafka.faults import ClientFaults, FatalServiceError
from stream_detector.kafka.feedback_reader import FeedbackReader
from stream_detector.kafka.health import HealthState, StatusServer
from stream_detector.kafka.lifecycle import ModelLifecycle
from stream_detector.kafka.output import Output
from stream_detector.kafka.ownership import Ownership
from stream_detector.kafka.partitions import open_partition_state
from stream_detector.kafka.preflight import wait_for_broker
from stream_detector.kafka.records import (
    ConsumedBatch,
    alert_record,
    dead_letter_record,
)
from stream_detector.kafka.recovery import Recovery
from stream_detector.kafka.registry_topic import open_registry
from stream_detector.kafka.settings import consumer_config, producer_config, redact
from stream_detector.kafka.telemetry import ServiceMetrics
from stream_detector.stop_signals import stop_on_signals

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1  # a broker-side problem to fix (auth, topics) or output that could not be delivered
EXIT_CONFIG = 2  # the configuration or the model artefact is unusable

_LAG_EVERY_S = 1.0


def run_service(settings: Settings, *, stop_event: threading.Event | None = None) -> int:
    """Run until stopped (SIGTERM/SIGINT or `stop_event`); returns the process exit code."""
    stop = stop_event if stop_event is not None else threading.Event()
    with stop_on_signals(stop):
        try:
            service = KafkaService(settings, stop)
        except (ConfigError, ArtefactError) as exc:
            log.error("cannot start the service", error=str(exc))
            return EXIT_CONFIG
        except RegistryError as exc:  # e.g. a registry topic on a broker not reachable yet
            log.error("cannot start the service: the model registry is unreadable", error=str(exc))
            return EXIT_FATAL
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


class KafkaService:
    """One consumer-group member: owns the clients and the detector, and runs the loop."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.kafka = settings.kafka
        self.stop = stop
        self.metrics = ServiceMetrics()
        self.health = HealthState()
        self.tracker = DeliveryTracker()
        # With a registry, its active version is the model to serve (every replica follows it).
        self.registry = open_registry(settings)
        active = None if self.registry is None else self.registry.active()
        self.detector = load_detector(
            settings, None if active is None else self.registry.artefact_dir(active)
        )
        # With the input mapping the model artefact supplied (load_detector logs what it took),
        # so that the state stores and output see the mode and keys the detector decodes with.
        settings = self.settings = self.detector.settings
        self.health.model_loaded = True
        meta = self.detector.metadata
        self.metrics.start_model(self.detector.model_version, meta.features)
        self.drift = DriftMonitor.of_model(settings.drift, meta)
        self.lifecycle = (
            None
            if self.registry is None
            else ModelLifecycle(settings, self.detector, self.registry, self.metrics)
        )
        if self.lifecycle is not None:
            self.lifecycle.start()
        self.drift_version = meta.model_version
        self._last_drift_log = time.monotonic()
        self.feedback = (
            None
            if self.kafka.feedback_topic is None
            else FeedbackReader(self.kafka, self.detector.feedback, self.metrics)
        )
        # The one replica that dead-letters bad feedback and retrains: the owner of this partition.
        self._leader_partition = (self.kafka.input_topics[0], 0)
        self.source = f"stream-detector/{self.kafka.group_id}"
        self.faults = ClientFaults(self.kafka.bootstrap_servers)
        self.clients = Clients()
        self.ownership = Ownership()
        self._last_lag = 0.0
        # Per-partition engine state (None: state.store = "none").
        self.state = open_partition_state(settings, self.detector)
        self.output = Output(self.kafka, self.clients, self.tracker, self.metrics, self.faults)
        self.policy = commit_policy(
            settings,
            clients=self.clients,
            output=self.output,
            tracker=self.tracker,
            ownership=self.ownership,
            state=self.state,
            metrics=self.metrics,
            faults=self.faults,
        )
        self.recovery = Recovery(
            self.kafka,
            state=self.state,
            ownership=self.ownership,
            policy=self.policy,
            tracker=self.tracker,
            metrics=self.metrics,
            health=self.health,
            faults=self.faults,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        port = self.settings.observability.http_port
        server = None if port is None else StatusServer(self.metrics.registry, self.health, port)
        if server is not None:
            server.start()
        try:
            if not wait_for_broker(self.settings, self.stop, self.faults):
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
            self.faults.failing = True
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

    def _start_clients(self) -> None:
        consumer_conf = {
            **consumer_config(self.kafka),
            "error_cb": self.faults.on_client_error,
            "on_commit": self.faults.on_commit,
        }
        txn_id = self.policy.transactional_id
        producer_conf = {
            **producer_config(self.kafka, txn_id),
            "error_cb": self.faults.on_client_error,
        }
        log.info(
            "starting kafka clients",
            consumer=redact(consumer_config(self.kafka)),
            producer=redact(producer_config(self.kafka, txn_id)),
            processing_guarantee=self.kafka.processing_guarantee,
        )
        self.clients.producer = create_client(Producer, producer_conf)
        self.policy.start()
        if self.feedback is not None:  # before joining: the first batch sees the feedback so far
            self.feedback.start(self.stop)
        consumer = self.clients.consumer = create_client(Consumer, consumer_conf)
        consumer.subscribe(
            list(self.kafka.input_topics),
            on_assign=self.recovery.on_assign,
            on_revoke=self.recovery.on_revoke,
            on_lost=self.recovery.on_lost,
        )

    def _loop(self) -> None:
        consumer = self.clients.require_consumer()
        while not self.stop.is_set():
            self.faults.raise_if_fatal()
            messages = consumer.consume(self.kafka.batch_size, self.kafka.batch_timeout_s)
            self.health.heartbeat()
            data = self.recovery.check_restored_positions(consumer, self._data_messages(messages))
            if self.feedback is not None:
                self.feedback.poll()
            if data:
                self._process(data)
            self.output.serve(0.0)
            self.policy.between_batches()
            self._update_lag(consumer)

    def _shutdown(self) -> int:
        """Finish what was produced, commit it, leave the group; within shutdown_timeout_s."""
        self.output.stop_deadline = time.monotonic() + self.kafka.shutdown_timeout_s
        log.info("stopping: draining produced messages", unacknowledged=self.tracker.unsettled)
        drained = self.output.drain()
        self.policy.finish()
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
        self.clients.close()  # leaves the group; runs on_revoke
        if self.lifecycle is not None:
            self.lifecycle.close()
        if self.feedback is not None:
            self.feedback.close()
        if self.state is not None:
            self.state.close()

    # -- one batch -------------------------------------------------------------------------------

    def _data_messages(self, messages: list[Message]) -> list[Message]:
        """Split off error events (rare), acting on each; returns the data messages."""
        errors = [m for m in messages if m.error() is not None]
        if not errors:
            return messages
        for message in errors:
            self.faults.on_consume_error(message.error(), message)
        return [m for m in messages if m.error() is None]

    def _process(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        consumed = ConsumedBatch.from_messages(messages)
        # A model swap (the registry's active version changed) resolves the episodes the old
        # model had open; those resolves go out with this batch.
        swap_alerts = [] if self.lifecycle is None else self.lifecycle.before_batch()
        if self.drift_version != self.detector.model_version:
            self._follow_model()
        result = self.detector.process_messages(
            consumed.payloads,
            consumed.keys,
            consumed.broker_ts_ms,
            streams=consumed.stream_codes(),
        )
        offsets = consumed.next_offsets()
        self.ownership.positions.update(offsets)
        if self.state is not None:
            events = result.decoded.batch
            self.state.observe(
                consumed.partition_list, consumed.partition_ids[events.index], events.keys
            )
        seq = self.policy.open_batch(offsets)
        alerts = swap_alerts + result.alerts
        records = [alert_record(a, self.kafka.alert_topic, self.source, seq) for a in alerts]
        dead_letters, max_bytes = self.kafka.dead_letter_topic, self.kafka.max_message_bytes
        records += [
            dead_letter_record(r, messages[r.index], dead_letters, seq, max_bytes)
            for r in result.decoded.rejects
        ]
        leader = self._leader_partition in self.ownership.assigned
        if self.feedback is not None and leader:
            records += self.feedback.dead_letters(seq)
        self.policy.produce_batch(seq, records, offsets)
        elapsed = time.perf_counter() - started
        self.metrics.record_batch(len(messages), result, self.detector, elapsed)
        self.metrics.count_alerts(swap_alerts)
        figures = self._record_drift(result.scored)
        if self.lifecycle is not None:
            self.lifecycle.after_batch(result.decoded.batch, alerts, figures, leader)
        for alert in alerts:
            log.info(
                "alert",
                kind=alert.kind,
                key=alert.key,
                alert_id=alert.alert_id,
                severity=alert.severity,
                score=round(alert.score, 4),
                threshold=round(alert.threshold, 4),
            )

    def _follow_model(self) -> None:
        """Drift is measured per model version: after a swap, against the new calibration."""
        meta = self.detector.metadata
        self.drift = DriftMonitor.of_model(self.settings.drift, meta)
        self.drift_version = meta.model_version

    def _record_drift(self, scored: ScoredWindows) -> DriftFigures:
        """Fold the batch into the drift figures and export them; every drift.log_interval_s,
        close the new-key interval and log one `drift` line. Returns the figures."""
        drift, detector = self.drift, self.detector
        drift.update(scored)
        drift.observe_keys(detector.keys_seen_total, detector.keys_new_total)
        now = time.monotonic()
        interval_ended = now - self._last_drift_log >= self.settings.drift.log_interval_s
        if interval_ended:
            self._last_drift_log = now
            drift.close_interval()
        figures = drift.figures()
        if interval_ended:
            log.info("drift", model_version=detector.model_version, **drift_fields(figures))
        self.metrics.record_drift(detector.model_version, figures)
        return figures

    def _update_lag(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now - self._last_lag < _LAG_EVERY_S or not self.ownership.assigned:
            return
        self._last_lag = now
        owned = [TopicPartition(t, p) for t, p in self.ownership.assigned]
        try:
            positions = consumer.position(owned)
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
