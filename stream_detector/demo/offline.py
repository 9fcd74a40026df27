"""Fitting a model on a stretch of the synthetic feed, and scoring one against it without Kafka.

The feed is taken through its JSON payloads and the service's Decoder rather than straight from
the generator's arrays, so training and the offline check see the values exactly as the live
service will after a round trip through Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from stream_detector.config import Settings
from stream_detector.demo.scenario import slack_s
from stream_detector.demo.scoreboard import Score, Scoreboard
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.training import train
from stream_detector.engine.decode import Decoder
from stream_detector.engine.types import Decoded
from stream_detector.scenarios.telemetry import GeneratorConfig, TelemetryGenerator

log = structlog.get_logger(__name__)

# About what one consume() call of the service takes from the live demo feed, so thresholds here
# are updated at a similar granularity.
TICKS_PER_BATCH = 10


def feed_batches(
    generator: TelemetryGenerator,
    ticks: int,
    decoder: Decoder,
    ticks_per_batch: int = TICKS_PER_BATCH,
) -> Iterator[Decoded]:
    """The generator's next `ticks` readings of every device, decoded in service-sized batches."""
    pending: list[bytes] = []
    for n, payloads in enumerate(generator.messages(ticks), start=1):
        pending.extend(payloads)
        if n % ticks_per_batch == 0 or n == ticks:
            yield decoder.decode_messages(pending)
            pending = []


def train_from_feed(
    feed: GeneratorConfig,
    ticks: int,
    settings: Settings,
    out_dir: Path | None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ModelArtefact:
    """Train on the first `ticks` readings of `feed`, which must be anomaly-free (its warm-up)."""
    if feed.anomaly_rate > 0 and ticks * feed.period_s > feed.warmup_s:
        raise ValueError(
            f"{ticks} ticks run past the feed's anomaly-free warm-up ({feed.warmup_s}s); "
            "train on fewer ticks or on a feed with anomaly_rate=0"
        )
    generator = TelemetryGenerator(feed)
    batches = feed_batches(generator, ticks, Decoder(settings.input))
    return train(batches, settings, out_dir, progress)


def score_offline(
    feed: GeneratorConfig, ticks: int, settings: Settings, artefact: ModelArtefact
) -> Score:
    """Run `ticks` readings of `feed` through the engine in-process and score its alerts.

    What the live demo would report for the same feed, minus Kafka: a quick check of a model and
    of the demo's threshold settings.
    """
    generator = TelemetryGenerator(feed)
    detector = Detector(settings, artefact)
    board = Scoreboard(slack_s(settings, feed))
    horizon = feed.start_ts
    for decoded in feed_batches(generator, ticks, detector.decoder):
        for alert in detector.process(decoded).alerts:
            board.add_alert(alert.to_dict())
        horizon = float(decoded.batch.ts.max())
    board.add_injected(generator.anomalies)
    score = board.score(horizon)
    log.info("offline demo score", ticks=ticks, devices=feed.devices, **score.as_dict())
    return score
