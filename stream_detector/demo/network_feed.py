"""Playing the network flow feed into a topic on a compressed event-time clock.

The network scenario's attacks last minutes of event time and the detector sees a host's traffic
through 10 s buckets, so played in real time a one-minute demo would close six buckets per host
and show nothing. The flows keep the event times the generator gave them, but are produced
`speed` times faster than those times advance: at x30, one wall second carries 30 s of traffic,
a 10 s bucket closes every third of a second, and a two-minute port scan plays in four seconds.
The first `backlog_s` of event time (attack-free) is produced at once, as history for the
detector to warm up on, like the IoT feed's backlog.

Pacing follows the running maximum of the flows' event times, so the few flows the generator
delivers late are produced when a collector would deliver them: after the flows they trail.
"""

from __future__ import annotations

import time
from typing import Final

import numpy as np
from confluent_kafka import Producer

from stream_detector.config import KafkaConfig
from stream_detector.demo.feed import PacedProducer
from stream_detector.scenarios.flows import NetworkConfig, generate

_IDLE_S: Final = 0.01
_CHUNK: Final = 5000  # flows encoded and handed to the producer at a time


class NetworkFeedProducer(PacedProducer):
    """The flows of `config` in arrival order, keyed by source host, paced at `speed`x."""

    def __init__(
        self, kafka: KafkaConfig, topic: str, config: NetworkConfig, backlog_s: float, speed: float
    ) -> None:
        super().__init__(kafka, topic)
        self.config = config
        self.backlog_s = backlog_s
        self.speed = speed
        self._clock = np.empty(0)  # running max event time per flow; set once generated

    def horizon(self, events: int) -> float:
        """Arrival order is event order up to the collector's jitter, so the first `events` flows
        hold every on-time flow before the latest event time among them, less that jitter."""
        clock = self._clock
        if events <= 0 or not len(clock):
            return self.config.start_ts
        return float(clock[min(events, len(clock)) - 1]) - self.config.jitter_s

    def _play(self, producer: Producer) -> None:
        feed = generate(self.config)
        clock = np.maximum.accumulate(feed.ts)
        self._clock = clock
        keys = [ip.encode() for ip in feed.src_ip.tolist()]
        # Wall seconds after the live start at which each flow is due; the backlog's are < 0.
        due = (clock - (self.config.start_ts + self.backlog_s)) / self.speed
        backlog_end = int(np.searchsorted(due, 0.0))
        pending = sorted(feed.anomalies, key=lambda a: a.start_ts)
        live_start: float | None = None
        sent = 0
        while sent < len(feed) and not self._stopping():
            if sent >= backlog_end and live_start is None:
                live_start = time.monotonic()
            if live_start is None:
                limit = backlog_end
            else:
                limit = int(np.searchsorted(due, time.monotonic() - live_start, side="right"))
            end = min(limit, sent + _CHUNK)
            if end <= sent:
                producer.poll(_IDLE_S)
                continue
            # Anomalies first: each is handed over before the first flow inside it is produced.
            started = [a for a in pending if a.start_ts <= clock[end - 1]]
            pending = pending[len(started) :]
            self._injected(started)
            sent += self._send(producer, feed.payloads(slice(sent, end)), keys[sent:end])
