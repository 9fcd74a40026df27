"""What the demo watches, from the outside, the way an operator would.

The service's numbers come from its own /metrics endpoint and its alerts from the alert topic, so
the live view shows what any Prometheus server and any alert consumer would see, and the demo
needs no handle into the running service.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.config import KafkaConfig
from stream_detector.kafka.settings import common_config

log = structlog.get_logger(__name__)

_SCRAPE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class ServiceNumbers:
    """One scrape of the service's metrics, summed over label values (partitions)."""

    events_in: int = 0
    lag: int = 0
    keys: int = 0
    open_episodes: int = 0
    windows_scored: int = 0
    alerts_opened: int = 0
    alerts_resolved: int = 0
    dead_letters: int = 0


def parse_metrics(text: str) -> ServiceNumbers:
    """The figures the view shows, from Prometheus text exposition format."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name == "sd_alerts_total":
                name = f"sd_alerts_{sample.labels.get('kind', '')}"
            totals[name] = totals.get(name, 0.0) + sample.value

    def get(name: str) -> int:
        return int(totals.get(name, 0.0))

    return ServiceNumbers(
        events_in=get("sd_events_in_total"),
        lag=get("sd_consumer_lag"),
        keys=get("sd_keys_tracked"),
        open_episodes=get("sd_open_episodes"),
        windows_scored=get("sd_windows_scored_total"),
        alerts_opened=get("sd_alerts_open"),
        alerts_resolved=get("sd_alerts_resolve"),
        dead_letters=get("sd_dead_letters_total"),
    )


class MetricsProbe:
    """Scrapes http://127.0.0.1:<port>/metrics; None while the endpoint is not up yet."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def read(self) -> ServiceNumbers | None:
        try:
            with urllib.request.urlopen(self.url, timeout=_SCRAPE_TIMEOUT_S) as response:
                return parse_metrics(response.read().decode())
        except (urllib.error.URLError, OSError):
            return None


class AlertReader:
    """Reads the alert topic from the beginning, without joining a consumer group.

    Assigning the partitions directly avoids a group rebalance (seconds on a fresh broker) and
    commits nothing, so the view never interferes with a real alert consumer's offsets.
    """

    def __init__(self, kafka: KafkaConfig, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {
                **common_config(kafka),
                "group.id": f"stream-detector-demo-view-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )

    def poll(self, timeout_s: float) -> list[dict[str, Any]]:
        """Alert `data` objects that arrived, in partition order; malformed ones are skipped."""
        alerts = []
        for message in self._consumer.consume(1000, timeout_s):
            if message.error() is not None:
                continue
            try:
                alerts.append(orjson.loads(message.value())["data"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("unreadable alert skipped", offset=message.offset())
        return alerts

    def close(self) -> None:
        self._consumer.close()
