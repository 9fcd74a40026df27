"""`stream-detector broker` and `stream-detector generate`: the demo's parts, one at a time.

`broker` gives local development a Kafka-protocol broker without Docker; `generate` plays the
synthetic feed into any topic (or into files), for tests, benchmarks and trying `run` by hand.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import structlog

from stream_detector.config import ConfigError, KafkaConfig
from stream_detector.demo.broker import EmbeddedBroker, listening
from stream_detector.demo.feed import FeedPlan, FeedProducer
from stream_detector.demo.scenario import DEMO_SEED, generator_config
from stream_detector.demo.signals import StopSignals, children_shielded
from stream_detector.demo.topics import ensure_topics
from stream_detector.scenarios.telemetry import GeneratorConfig, write_jsonl, write_labels

log = structlog.get_logger(__name__)

_ALIVE_EVERY_S: Final = 2.0
# Written to files when no --ticks is given: two simulated days of every device.
DEFAULT_FILE_TICKS: Final = 1200


def run_broker(port: int | None = None) -> int:
    """Run the embedded broker in the foreground until Ctrl-C/SIGTERM; 1 if it dies on its own."""
    broker = EmbeddedBroker(port)
    try:
        with StopSignals().installed() as signals:
            with children_shielded():
                broker.start()
            print(f"broker listening on {broker.bootstrap_servers}", flush=True)
            print(
                f"  try: stream-detector generate --topic events "
                f"--bootstrap-servers {broker.bootstrap_servers}",
                flush=True,
            )
            print("  storage is in memory; Ctrl-C stops it and forgets every topic", flush=True)
            signals.live = True
            # The broker's health, from outside: still accepting connections on its port.
            while not signals.stop.wait(_ALIVE_EVERY_S):
                if not listening(broker.port):
                    print("stream-detector broker: the broker exited on its own", file=sys.stderr)
                    return 1
            return 0
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


@dataclass(frozen=True)
class GenerateOptions:
    """Flags of `generate`: a topic to feed, or files to write (`out`, optionally `labels`).

    rate <= 0 produces as fast as the broker takes it; with neither `ticks` nor `duration_s` a
    topic is fed until Ctrl-C.
    """

    topic: str | None = None
    bootstrap_servers: str | None = None
    devices: int = 200
    rate: float = 2000.0
    duration_s: float = 0.0
    ticks: int | None = None
    seed: int = DEMO_SEED
    anomaly_rate: float | None = None
    partitions: int = 4
    out: Path | None = None
    labels: Path | None = None

    def validate(self) -> None:
        if (self.topic is None) == (self.out is None):
            raise ConfigError("pass either --topic (to feed a topic) or --out FILE.jsonl")
        if self.devices < 1 or self.partitions < 1:
            raise ConfigError("--devices and --partitions must be at least 1")
        if self.ticks is not None and self.ticks < 1:
            raise ConfigError("--ticks must be at least 1")
        if self.duration_s < 0 or (self.anomaly_rate is not None and self.anomaly_rate < 0):
            raise ConfigError("--duration and --anomaly-rate must not be negative")


def run_generate(options: GenerateOptions, kafka: KafkaConfig) -> int:
    """Feed `options.topic` through `kafka`, or write the files; 1 on delivery errors."""
    options.validate()
    feed = generator_config(options.devices, options.seed)
    if options.anomaly_rate is not None:
        feed = replace(feed, anomaly_rate=options.anomaly_rate)
    if options.out is not None:
        return _write_files(options, feed, options.out)
    return _feed_topic(options, feed, str(options.topic), kafka)


def _write_files(options: GenerateOptions, feed: GeneratorConfig, out: Path) -> int:
    ticks = options.ticks or DEFAULT_FILE_TICKS
    anomalies = write_jsonl(out, feed, ticks)
    if options.labels is not None:
        write_labels(options.labels, anomalies)
    print(
        f"wrote {ticks * feed.devices} events ({ticks} per device) to {out}, "
        f"{len(anomalies)} injected anomalies" + _labelled(options),
        flush=True,
    )
    return 0


def _feed_topic(
    options: GenerateOptions, feed: GeneratorConfig, topic: str, kafka: KafkaConfig
) -> int:
    ensure_topics(kafka, {topic: options.partitions})
    producer = FeedProducer(kafka, FeedPlan(topic, feed, options.rate, max_ticks=options.ticks))
    started = time.monotonic()
    try:
        with StopSignals().installed() as signals:
            signals.live = True
            producer.start()
            while producer.running and not signals.stop.wait(0.2):
                if options.duration_s and time.monotonic() - started >= options.duration_s:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        producer.stop()
    anomalies = producer.anomalies()
    if options.labels is not None:
        write_labels(options.labels, anomalies)
    print(
        f"produced {producer.produced} events ({producer.ticks} per device) to {topic} "
        f"on {kafka.bootstrap_servers} in {time.monotonic() - started:.1f}s, "
        f"{len(anomalies)} injected anomalies" + _labelled(options),
        flush=True,
    )
    if producer.failed:
        print(f"stream-detector generate: {producer.failed}", file=sys.stderr)
        return 1
    return 0


def _labelled(options: GenerateOptions) -> str:
    return f", labelled in {options.labels}" if options.labels is not None else ""
