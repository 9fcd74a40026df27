"""The demo's one set of choices: the feed it plays, and the detector settings that suit it.

The live demo, `--train`, the bundled model's trainer and the offline check all read these, so the
bundled artefact is always trained with the window, features and architecture the demo serves with
(`load_artefact` would refuse it otherwise), and a tuning change is made in one place.

Timeline of a demo feed: the first `warmup_ticks` readings of every device are anomaly-free and
are produced at once as a backlog, so each key's normalisation and its own threshold warm up on
normal data within seconds; the live feed after it carries the injected anomalies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, Protocol

from stream_detector.config import KafkaConfig, Settings, deep_merge, load_settings
from stream_detector.demo.feed import PacedProducer
from stream_detector.scenarios.presets import preset
from stream_detector.scenarios.telemetry import GeneratorConfig, mapping_for

BUNDLED_MODEL_DIR: Final = Path(__file__).resolve().parent / "model"


def _own_threshold_ticks(settings: Settings) -> int:
    """Readings after which a device's windows are judged by its own threshold: its first window
    falls due at the first reading count that is at least window.size and normalize.warmup and a
    whole number of window.stride steps past window.size (the window store's rule), one more
    every window.stride readings, and its threshold is its own once threshold.warmup windows
    were learnt."""
    window = settings.window
    wait = max(settings.normalize.warmup - window.size, 0)
    first = window.size + -(-wait // window.stride) * window.stride
    return first + settings.threshold.warmup * window.stride


# Readings per device played as a backlog before the live feed: enough for every device's own
# threshold to take over before the first live reading. A shorter backlog leaves the live feed's
# first minutes to the warm-up threshold (the global one x 1.5), which is too low for the noisier
# devices, and a newcomer's first alerts would be false.
WARMUP_TICKS: Final = _own_threshold_ticks(load_settings(None, preset("iot_demo")))
# With `demo --train` the backlog is a whole simulated day, which the model is fitted on: a shorter
# stretch shows each device in one phase of its cycle only, and the model then takes the rest of
# the cycle for anomalies.
TRAIN_WARMUP_TICKS: Final = 600

# The live demo and the bundled model's training data come from the same generator with different
# seeds, so the demo never scores the very readings the model was fitted on.
DEMO_SEED: Final = 0
TRAINING_SEED: Final = 7

def generator_config(
    devices: int = 200, seed: int = DEMO_SEED, warmup_ticks: int = WARMUP_TICKS
) -> GeneratorConfig:
    """The demo feed: anomalies only after the warm-up backlog."""
    base = GeneratorConfig(devices=devices, seed=seed)
    return replace(base, warmup_s=warmup_ticks * base.period_s)


def demo_settings(
    feed: GeneratorConfig, overrides: dict[str, Any] | None = None
) -> Settings:
    """Settings for serving (or training on) `feed`; `overrides` (nested, like --set) win.

    The environment (SD_*) still applies beneath the overrides, as for every command.
    """
    sections: dict[str, Any] = {"input": mapping_for(feed), **preset("iot_demo")}
    return load_settings(None, deep_merge(sections, overrides or {}))


def slack_s(settings: Settings, feed: GeneratorConfig) -> float:
    """How long after an anomaly an alert still counts as its detection: one window's span."""
    return settings.window.size * feed.period_s


class DemoScenario(Protocol):
    """What the demo runner needs of a scenario (IotScenario, NetworkScenario): the feed and its
    producer, the settings and model that suit it, and how it is shown and scored."""

    name: str
    input_topic: str
    partitions: int
    kinds: tuple[str, ...]  # the anomaly kinds it injects, for the per-kind scoreboard
    bundled_model: Path

    def settings(self, overrides: dict[str, Any] | None = None) -> Settings: ...

    def training_settings(self, overrides: dict[str, Any] | None = None) -> Settings: ...

    @property
    def training_phase(self) -> str: ...

    def train(
        self, settings: Settings, out_dir: Path, progress: Callable[[dict[str, Any]], None]
    ) -> None: ...

    def producer(self, kafka: KafkaConfig) -> PacedProducer: ...

    def slack_s(self, settings: Settings) -> float: ...

    def describe(self) -> str: ...

    def summary(self) -> dict[str, Any]: ...
