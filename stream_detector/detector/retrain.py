"""Retraining on recent data through the training code path, with the anomalies in it kept out.

A model retrained on whatever the stream carried lately would learn its anomalies as normal and
stop alerting on their like. So the recent events are first replayed through the active model,
in a fresh detector (its episodes are those that model finds in this data, whatever state the
service is in), and each episode's span becomes an excluded span of its key, as do the episodes
operators marked true positive. `train` then cuts and normalises the windows as it always does and
leaves out those overlapping a span of their key.

The events are held in memory twice over (the replay and the training both need them), so the
caller bounds them: `recent_events` keeps the most recent ones, lifecycle.retrain_max_events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from stream_detector.config import Settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.exclusions import ExcludedSpans
from stream_detector.detector.facade import Detector
from stream_detector.detector.training import train
from stream_detector.engine.types import Decoded

log = structlog.get_logger(__name__)

Span = tuple[str, float, float]  # key, first and last event time


@dataclass(frozen=True)
class RetrainResult:
    """The candidate and what went into it; `report` is what the registry keeps as its
    "retrain" report."""

    artefact: ModelArtefact
    out_dir: Path | None  # where it was written, for the registry to copy it from
    parent: str | None  # the active model's version, whose episodes were kept out
    episodes: int
    excluded_windows: int
    data_span: tuple[float, float]  # event times of the data, first and last
    report: dict[str, Any]


def recent_events(batches: Iterable[Decoded], limit: int) -> list[Decoded]:
    """The last `limit` events of the batches (rejects dropped: neither the replay nor training
    reads them), holding no more than `limit` events plus one batch at a time."""
    kept: deque[Decoded] = deque()
    total = 0
    for decoded in batches:
        if not len(decoded.batch):
            continue
        kept.append(decoded)
        total += len(decoded.batch)
        while total - len(kept[0].batch) >= limit:
            total -= len(kept.popleft().batch)
    if total > limit:
        oldest = kept.popleft()
        kept.appendleft(Decoded(batch=oldest.batch.rows(total - limit)))
    return list(kept)


def episode_spans(
    batches: Sequence[Decoded], settings: Settings, artefact: ModelArtefact
) -> list[Span]:
    """Each episode a fresh detector with `artefact` opens on the batches, as the span from its
    opening window's first event to its resolve's last window's end; one still open at the end
    runs to the data's last event time."""
    detector = Detector(settings, artefact)
    opened: dict[str, tuple[str, float]] = {}  # episode id -> key, opening window's start
    spans: list[Span] = []
    for decoded in batches:
        for alert in detector.process(decoded).alerts:
            if alert.kind == "open":
                opened[alert.episode_id] = (alert.key, alert.window_start)
            else:
                key, start = opened.pop(alert.episode_id)
                spans.append((key, start, alert.window_end))
    end = data_span(batches)[1]
    return spans + [(key, start, end) for key, start in opened.values()]


def data_span(batches: Sequence[Decoded]) -> tuple[float, float]:
    """The earliest and latest event time among the batches (events may arrive out of order)."""
    stamps = [decoded.batch.ts for decoded in batches if len(decoded.batch)]
    if not stamps:
        raise ValueError("no events to retrain on")
    return min(float(ts.min()) for ts in stamps), max(float(ts.max()) for ts in stamps)


def retrain(
    batches: Iterable[Decoded],
    settings: Settings,
    active: ModelArtefact | None,
    labelled: Iterable[Span] = (),
    out_dir: Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> RetrainResult:
    """A candidate trained by `train` (same settings, same seed) on `batches`, less the windows
    overlapping the episodes `active` finds in them (none without an active model) and the
    `labelled` spans (true positives, e.g. `FeedbackLedger.labelled_spans()`).

    Raises ValueError, as `train` does, when too little data is left to train on."""
    started = time.perf_counter()
    data = [decoded for decoded in batches if len(decoded.batch)]
    span = data_span(data)
    labelled = list(labelled)
    exclude = ExcludedSpans.from_pairs(labelled)
    found = [] if active is None else episode_spans(data, settings, active)
    for key, start, end in found:
        exclude.add(key, start, end)
    parent = None if active is None else active.metadata.model_version
    log.info(
        "retrain: episodes found",
        parent=parent,
        episodes=len(found),
        labelled=len(labelled),
        excluded_spans=len(exclude),
    )
    artefact = train(data, settings, out_dir, progress, exclude)
    training = artefact.metadata.training
    report = {
        "events": training["events"],
        "keys": training["keys"],
        "windows": training["windows"],
        "excluded_windows": training["excluded_windows"],
        "episodes": len(found),
        "labelled_spans": len(labelled),
        "data_span": list(span),
        "seconds": round(time.perf_counter() - started, 3),
        "parent": parent,
    }
    log.info("retrain: candidate trained", model_version=artefact.metadata.model_version, **report)
    return RetrainResult(
        artefact=artefact,
        out_dir=out_dir,
        parent=parent,
        episodes=len(found),
        excluded_windows=training["excluded_windows"],
        data_span=span,
        report=report,
    )
