"""`demo --scenario network`: the flow feed, its compressed clock, and the detector that suits it.

The detector reads the flows in aggregate mode with the mapping of scenarios/flows.py (10 s buckets
per source host: flows, bytes, packets, distinct ports and hosts) and the settings the network
evaluation was tuned with (evaluation/raw_events.py), so the live demo shows what the evaluation
measures. A small model for them is bundled (`demo/network_model/`, trained by
`python -m stream_detector.demo.bundled --scenario network`); `--train` fits one on the feed's
backlog instead.

Timeline at the default x30: the first 30 minutes of event time (one daily cycle of every host,
attack-free) are produced at once as a backlog; then every wall second plays 30 s of traffic.
Attacks (DDoS bursts, port scans, exfiltration surges, hosts gone silent, two of each per half
hour of event time) start within the first two thirds of the live stretch, so with the default 60 s
all of them have played and been judged before the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from stream_detector.aggregate.decoder import AggregatingDecoder
from stream_detector.config import KafkaConfig, Settings, deep_merge, load_settings
from stream_detector.demo.network_feed import NetworkFeedProducer
from stream_detector.demo.scoreboard import Score, Scoreboard
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.training import train
from stream_detector.scenarios.flows import (
    NETWORK_ANOMALY_KINDS,
    NetworkConfig,
    generate,
    network_sections,
)
from stream_detector.scenarios.presets import preset

NETWORK_MODEL_DIR: Final = Path(__file__).resolve().parent / "network_model"
DEFAULT_HOSTS: Final = 40
DEFAULT_SPEED: Final = 30.0  # event-time seconds played per wall second
BACKLOG_S: Final = 1800  # attack-free history produced at once: one daily cycle
ATTACKS_PER_HALF_HOUR: Final = 8
# The live stretch played when the demo runs until Ctrl-C (--duration 0): two hours of event
# time, four minutes at x30; the feed then ends and the demo keeps its figures until stopped.
UNTIL_STOPPED_S: Final = 7200
# The generator needs twice the longest attack (300 s) after the backlog to place attacks.
_SHORTEST_LIVE_S: Final = 900
# The model's training feed: another seed (other hosts' habits), no attacks, three cycles.
TRAINING_SEED: Final = 7
TRAINING_S: Final = 5400
# Flows per Detector call in the offline check: about what a consume() takes at x30.
_OFFLINE_BATCH: Final = 2000

def network_feed_config(
    hosts: int = DEFAULT_HOSTS, seed: int = 0, live_s: float = 60.0 * DEFAULT_SPEED
) -> NetworkConfig:
    """The demo feed: BACKLOG_S of attack-free history, then `live_s` of event time with attacks."""
    live = max(int(live_s), _SHORTEST_LIVE_S)
    attacks = max(4, round(ATTACKS_PER_HALF_HOUR * live / 1800))
    return NetworkConfig(
        hosts=hosts, duration_s=BACKLOG_S + live, warmup_s=BACKLOG_S, anomalies=attacks, seed=seed
    )


def network_settings(feed: NetworkConfig, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings for serving (or training on) `feed`; `overrides` (nested, like --set) win."""
    sections = deep_merge(network_sections(feed), preset("network_demo"))
    return load_settings(None, deep_merge(sections, overrides or {}))


def train_on_flows(
    feed: NetworkConfig,
    until_s: float,
    settings: Settings,
    out_dir: Path | None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ModelArtefact:
    """Train on the feed's flows before `until_s` of event time, which must hold no attack.

    The flows go through their JSON payloads and the service's decoder, so training sees the
    buckets exactly as the live service will.
    """
    flows = generate(feed)
    if any(a.start_ts < feed.start_ts + until_s for a in flows.anomalies):
        raise ValueError(f"the first {until_s:g} s of this feed hold attacks; train on less")
    normal = flows.ts < feed.start_ts + until_s
    decoded = AggregatingDecoder(settings).decode_messages(flows.payloads(normal))
    return train([decoded], settings, out_dir, progress)


def slack_s(settings: Settings) -> float:
    """How long after an attack an alert still counts as its detection: one window's span."""
    return settings.window.size * settings.aggregate.bucket_width_s


def score_flows_offline(feed: NetworkConfig, settings: Settings, artefact: ModelArtefact) -> Score:
    """Run the whole feed through the engine in-process, in arrival order, and score its alerts:
    what the live demo reports for the same feed, minus Kafka."""
    flows = generate(feed)
    detector = Detector(settings, artefact)
    board = Scoreboard(slack_s(settings), NETWORK_ANOMALY_KINDS)
    board.add_injected(flows.anomalies)
    for start in range(0, len(flows), _OFFLINE_BATCH):
        rows = slice(start, start + _OFFLINE_BATCH)
        for alert in detector.process_messages(flows.payloads(rows)).alerts:
            board.add_alert(alert.to_dict())
    return board.score(float(flows.ts.max()))


@dataclass(frozen=True)
class NetworkScenario:
    """`demo --scenario network` as the runner drives it (see demo/scenario.py)."""

    hosts: int = DEFAULT_HOSTS
    speed: float = DEFAULT_SPEED
    duration_s: float = 60.0
    seed: int = 0

    name: str = "network"
    input_topic: str = "demo.flows"
    # One partition: the feed's order is event order, which a single partition keeps as is.
    partitions: int = 1
    kinds: tuple[str, ...] = NETWORK_ANOMALY_KINDS
    bundled_model: Path = NETWORK_MODEL_DIR

    @property
    def feed(self) -> NetworkConfig:
        live_s = self.duration_s * self.speed if self.duration_s else UNTIL_STOPPED_S
        return network_feed_config(self.hosts, self.seed, live_s)

    def settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        return network_settings(self.feed, overrides)

    def training_settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        return self.settings(overrides)

    @property
    def training_phase(self) -> str:
        return (
            f"training on the feed's attack-free backlog ({BACKLOG_S // 60} minutes of every "
            "host's flows)"
        )

    def train(
        self, settings: Settings, out_dir: Path, progress: Callable[[dict[str, Any]], None]
    ) -> None:
        train_on_flows(self.feed, BACKLOG_S, settings, out_dir, progress)

    def producer(self, kafka: KafkaConfig) -> NetworkFeedProducer:
        return NetworkFeedProducer(kafka, self.input_topic, self.feed, BACKLOG_S, self.speed)

    def slack_s(self, settings: Settings) -> float:
        return slack_s(settings)

    def describe(self) -> str:
        return f"{self.hosts} hosts' flows, event time x{self.speed:g}"

    def summary(self) -> dict[str, Any]:
        return {"scenario": self.name, "hosts": self.hosts, "speed": self.speed}


def training_feed(hosts: int = DEFAULT_HOSTS) -> NetworkConfig:
    """The bundled model's training flows: TRAINING_SEED's hosts, no attacks."""
    return NetworkConfig(
        hosts=hosts, duration_s=TRAINING_S, warmup_s=0, anomalies=0, seed=TRAINING_SEED
    )
