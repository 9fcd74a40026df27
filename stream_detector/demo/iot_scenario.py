"""`demo --scenario iot` (the default) as the runner drives it: the choices of demo/scenario.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from stream_detector.config import KafkaConfig, Settings, deep_merge
from stream_detector.demo.feed import FeedPlan, FeedProducer
from stream_detector.demo.offline import train_from_feed
from stream_detector.demo.scenario import (
    BUNDLED_MODEL_DIR,
    DEMO_SEED,
    TRAIN_WARMUP_TICKS,
    WARMUP_TICKS,
    demo_settings,
    generator_config,
    slack_s,
)
from stream_detector.scenarios.telemetry import ANOMALY_KINDS, GeneratorConfig

DEFAULT_DEVICES: Final = 200
DEFAULT_RATE: Final = 2000.0

# --train fits on the warm-up day with half the windows and fewer epochs than the bundled model,
# so the demo starts within a minute or so on a laptop CPU; the fit is rougher (offline, on the
# demo feed: precision about 0.8 against the bundled model's 0.9, recall alike).
QUICK_TRAIN: Final = {
    "train": {"epochs": 12, "stride": 2, "max_windows": 20_000, "batch_size": 128, "patience": 3}
}


@dataclass(frozen=True)
class IotScenario:
    """Simulated devices' telemetry at `rate` events per second (see demo/scenario.py)."""

    devices: int = DEFAULT_DEVICES
    rate: float = DEFAULT_RATE
    seed: int = DEMO_SEED
    trains: bool = False  # with --train the backlog is a whole day, the model's training data

    name: str = "iot"
    input_topic: str = "demo.telemetry"
    partitions: int = 4
    kinds: tuple[str, ...] = ANOMALY_KINDS
    bundled_model: Path = BUNDLED_MODEL_DIR

    @property
    def warmup_ticks(self) -> int:
        return TRAIN_WARMUP_TICKS if self.trains else WARMUP_TICKS

    @property
    def feed(self) -> GeneratorConfig:
        return generator_config(self.devices, self.seed, self.warmup_ticks)

    def settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        return demo_settings(self.feed, overrides)

    def training_settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        return demo_settings(self.feed, deep_merge(QUICK_TRAIN, overrides or {}))

    @property
    def training_phase(self) -> str:
        return (
            f"training on the feed's anomaly-free warm-up stretch ({self.warmup_ticks} readings "
            "per device)"
        )

    def train(
        self, settings: Settings, out_dir: Path, progress: Callable[[dict[str, Any]], None]
    ) -> None:
        train_from_feed(self.feed, self.warmup_ticks, settings, out_dir, progress)

    def producer(self, kafka: KafkaConfig) -> FeedProducer:
        return FeedProducer(
            kafka, FeedPlan(self.input_topic, self.feed, self.rate, self.warmup_ticks)
        )

    def slack_s(self, settings: Settings) -> float:
        return slack_s(settings, self.feed)

    def describe(self) -> str:
        return f"{self.devices} devices at {self.rate:g} events/s"

    def summary(self) -> dict[str, Any]:
        return {"scenario": self.name, "devices": self.devices, "rate": self.rate}
