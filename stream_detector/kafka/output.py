"""Alerts and dead letters into the producer, with back-pressure, and waiting for their acks.

At most kafka.max_in_flight records are unacknowledged at a time: past that (or when
librdkafka's own queue is full) the loop polls for acknowledgements before producing more, so a
slow broker slows consumption down instead of growing memory. Records whose delivery failed with
an error that may heal are produced again (`delivery.DeliveryTracker` decides which).
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException

from stream_detector.config import KafkaConfig
from stream_detector.kafka.clients import Clients
from stream_detector.kafka.delivery import DeliveryTracker, OutRecord
from stream_detector.kafka.faults import ClientFaults, FatalServiceError
from stream_detector.kafka.telemetry import ServiceMetrics


class Output:
    """The producer's side of the loop: produce, serve delivery callbacks, drain."""

    def __init__(
        self,
        kafka: KafkaConfig,
        clients: Clients,
        tracker: DeliveryTracker,
        metrics: ServiceMetrics,
        faults: ClientFaults,
    ) -> None:
        self.kafka = kafka
        self.clients = clients
        self.tracker = tracker
        self.metrics = metrics
        self.faults = faults
        # Set when the service stops: no wait for acknowledgements may run past it.
        self.stop_deadline: float | None = None

    def produce(self, record: OutRecord) -> None:
        """Hand one record to the producer, waiting (polling) while max_in_flight is reached."""
        producer = self.clients.require_producer()
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

    def serve(self, timeout_s: float) -> None:
        """Serve delivery callbacks, re-produce what failed with a healable error."""
        self.clients.require_producer().poll(timeout_s)
        for record in self.tracker.take_retries():
            self.metrics.delivery_retries.inc()
            self.produce(record)
        self.tracker.raise_if_failed()
        self.metrics.in_flight.set(self.tracker.in_flight)

    def drain(self) -> bool:
        """Wait until everything produced is acknowledged (or the stop deadline passes)."""
        deadline = self.stop_deadline or time.monotonic() + self.kafka.shutdown_timeout_s
        while self.tracker.unsettled and time.monotonic() < deadline:
            self.serve(min(0.1, max(deadline - time.monotonic(), 0.0)))
        self.serve(0.0)
        return self.tracker.unsettled == 0

    def _wait_for_acks(self) -> None:
        self.clients.require_producer().poll(0.1)
        self.tracker.raise_if_failed()
        self.faults.raise_if_fatal()
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            raise FatalServiceError(
                "shutdown deadline passed while waiting for the broker to acknowledge output; "
                "raise kafka.shutdown_timeout_s or check the broker"
            )
