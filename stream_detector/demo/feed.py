"""Producing a synthetic feed into a Kafka topic at a steady pace.

`PacedProducer` is the part every feed shares (thread, producer, back-pressure, delivery errors,
anomalies handed over); the network flows have their own pacing (demo/network_feed.py).

`FeedProducer` plays the IoT telemetry generator: first a backlog of ticks as fast as the broker
takes them (history the detector warms up on), then the rest paced to `rate` events per second,
keyed by device id with the murmur2_random partitioner, so each device's readings stay in order on
one partition as a Java producer would place them. The anomalies the generator injects are handed
over as they are injected, ahead of their readings, for the live scoreboard.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import orjson
import structlog
from confluent_kafka import KafkaError, Message, Producer

from stream_detector.config import KafkaConfig
from stream_detector.kafka.settings import producer_config
from stream_detector.scenarios.telemetry import (
    GeneratorConfig,
    InjectedAnomaly,
    TelemetryGenerator,
    mapping_for,
)

log = structlog.get_logger(__name__)

_IDLE_S = 0.01  # sleep while ahead of the target rate
_FLUSH_S = 10.0


def feed_horizon(feed: GeneratorConfig, events: int) -> float:
    """Event time before which the first `events` events of a feed hold every reading.

    The feed emits whole ticks in order, so n events cover n // devices complete ticks; a reading
    of tick t lies in [start + t * period, start + (t + 1) * period).
    """
    return feed.start_ts + (events // feed.devices) * feed.period_s


@dataclass(frozen=True)
class FeedPlan:
    """What to play: `rate` <= 0 means as fast as possible; `max_ticks` None means until stopped."""

    topic: str
    feed: GeneratorConfig
    rate: float
    backlog_ticks: int = 0
    max_ticks: int | None = None


class PacedProducer:
    """A feed played into a topic by a daemon thread: `start`, then `stop` (which flushes) or
    `join`. Subclasses say what is played and at what pace (`_play`); this class owns the thread,
    the producer, back-pressure, delivery errors and the hand-over of injected anomalies."""

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.topic = topic
        self._config = {**producer_config(kafka), "linger.ms": 20}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._new_anomalies: list[InjectedAnomaly] = []
        self._all_anomalies: list[InjectedAnomaly] = []
        self._produced = 0
        self._failed: str | None = None
        self._thread = threading.Thread(target=self._run, name="sd-demo-feed", daemon=True)

    # -- what the main thread reads --------------------------------------------------------------

    @property
    def produced(self) -> int:
        """Events handed to the producer so far."""
        return self._produced

    @property
    def failed(self) -> str | None:
        """Why the feed stopped on its own, if it did (a delivery error)."""
        return self._failed

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def take_anomalies(self) -> list[InjectedAnomaly]:
        """Anomalies injected since the last call."""
        with self._lock:
            taken, self._new_anomalies = self._new_anomalies, []
        return taken

    def anomalies(self) -> list[InjectedAnomaly]:
        """Every anomaly injected so far."""
        with self._lock:
            return list(self._all_anomalies)

    def horizon(self, events: int) -> float:
        """Event time before which the first `events` events hold every event of the feed."""
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop producing and wait for what was produced to be delivered (bounded)."""
        self._stop.set()
        self.join()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:  # never started: nothing to wait for
            self._thread.join(timeout)

    def _run(self) -> None:
        # Owned by this thread and gone with it: a producer outliving the broker would keep
        # logging failed reconnections until the process exits.
        producer = Producer(self._config)
        try:
            self._play(producer)
        finally:
            remaining = producer.flush(_FLUSH_S)
            if remaining:
                log.warning("feed stopped with events undelivered", undelivered=remaining)
            log.info("feed stopped", produced=self._produced, failed=self._failed)

    def _play(self, producer: Producer) -> None:
        """Produce the feed until it ends or `_stopping()`; the subclass's one job."""
        raise NotImplementedError

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._failed is not None

    def _injected(self, anomalies: list[InjectedAnomaly]) -> None:
        """Hand anomalies over, ahead of the events that carry them."""
        if anomalies:
            with self._lock:
                self._new_anomalies.extend(anomalies)
                self._all_anomalies.extend(anomalies)

    def _send(self, producer: Producer, payloads: list[bytes], keys: list[bytes]) -> int:
        done = self._produce(producer, payloads, keys)
        self._produced += done
        return done

    def _produce(self, producer: Producer, payloads: list[bytes], keys: list[bytes]) -> int:
        """Hand messages to the producer, waiting while its queue is full; returns how many went
        (fewer only when stopped while waiting, e.g. on a broker that is gone)."""
        topic, on_delivery = self.topic, self._on_delivery
        for n, (payload, key) in enumerate(zip(payloads, keys)):
            while True:
                try:
                    producer.produce(topic, value=payload, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    if self._stop.is_set():
                        return n
                    producer.poll(0.05)
        producer.poll(0)
        return len(payloads)

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None and self._failed is None:
            self._failed = f"feed delivery failed: {error.str()}"
            log.error("feed delivery failed", error=error.str(), topic=self.topic)


class FeedProducer(PacedProducer):
    """The IoT telemetry: the backlog ticks at once, then `rate` events per second."""

    def __init__(self, kafka: KafkaConfig, plan: FeedPlan) -> None:
        super().__init__(kafka, plan.topic)
        self.plan = plan
        self._ticks = 0

    @property
    def ticks(self) -> int:
        """Whole ticks (one reading of every device) handed to the producer so far."""
        return self._ticks

    def horizon(self, events: int) -> float:
        return feed_horizon(self.plan.feed, events)

    def _play(self, producer: Producer) -> None:
        plan = self.plan
        generator = TelemetryGenerator(plan.feed)
        key_field = mapping_for(plan.feed)["key_field"]
        keys: list[bytes] = []
        seen = 0
        live_start: float | None = None
        live_produced = 0
        ticks = plan.max_ticks if plan.max_ticks is not None else 2**62
        for tick, payloads in enumerate(generator.messages(ticks)):
            if self._stopping():
                break
            if not keys:
                # Devices come in the same order every tick: read their ids once.
                keys = [str(orjson.loads(p)[key_field]).encode() for p in payloads]
            injected = generator.anomalies
            self._injected(injected[seen:])
            seen = len(injected)
            if plan.rate > 0 and tick >= plan.backlog_ticks and live_start is None:
                live_start = time.monotonic()
            sent = 0
            while sent < len(payloads) and not self._stop.is_set():
                allowed = len(payloads) - sent
                if live_start is not None:
                    due = int(plan.rate * (time.monotonic() - live_start)) - live_produced
                    allowed = min(allowed, due)
                    if allowed <= 0:
                        producer.poll(_IDLE_S)
                        continue
                done = self._send(
                    producer, payloads[sent : sent + allowed], keys[sent : sent + allowed]
                )
                sent += done
                if live_start is not None:
                    live_produced += done
            if sent == len(payloads):
                self._ticks = tick + 1
