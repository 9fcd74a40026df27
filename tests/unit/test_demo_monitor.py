"""What the demo reads from the service: its Prometheus text, summed the way the view shows it."""

from __future__ import annotations

from prometheus_client import generate_latest

from stream_detector.demo.broker import free_port
from stream_detector.demo.monitor import MetricsProbe, ServiceNumbers, parse_metrics
from stream_detector.kafka.telemetry import ServiceMetrics


def test_parses_the_services_own_exposition() -> None:
    metrics = ServiceMetrics()
    metrics.events_in.inc(1200)
    metrics.windows_scored.inc(300)
    metrics.keys_tracked.set(40)
    metrics.open_episodes.set(3)
    metrics.alerts.labels(kind="open").inc(5)
    metrics.alerts.labels(kind="resolve").inc(2)
    metrics.dead_letters.inc(4)
    metrics.set_lag("events", 0, 7)
    metrics.set_lag("events", 3, 11)

    numbers = parse_metrics(generate_latest(metrics.registry).decode())

    assert numbers == ServiceNumbers(
        events_in=1200,
        lag=18,  # summed over partitions
        keys=40,
        open_episodes=3,
        windows_scored=300,
        alerts_opened=5,
        alerts_resolved=2,
        dead_letters=4,
    )


def test_a_service_not_listening_yet_reads_as_none() -> None:
    assert MetricsProbe(free_port()).read() is None
