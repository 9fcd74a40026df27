"""Retraining on recent data through the training code path, with the anomalies in it kept out.

A model retrained on whatever the stream carried lately would learn its anomalies as normal and
stop alerting on their like. So the span of each episode published on the data (drawn from its
alerts, `EpisodeSpans`, whichever model version raised it) becomes an excluded span of its key,
as do the episodes operators marked true positive. `train` then cuts and normalises the windows
as it always does and leaves out those overlapping a span of their key.

The events are held in memory, so the caller bounds them: `recent_events` keeps the most recent
ones, lifecycle.retrain_max_events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from stream_detector.config import Settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.exclusions import ExcludedSpans, Span
from stream_detector.detector.registry import ModelEntry, ModelRegistry
from stream_detector.detector.training import train
from stream_detector.engine.types import Decoded

log = structlog.get_logger(__name__)

# The name of the report a retrain leaves on its candidate in the registry.
RETRAIN_REPORT: Final = "retrain"


@dataclass(frozen=True)
class RetrainResult:
    """The candidate and what went into it; `report` is what the registry keeps as its
    "retrain" report."""

    artefact: ModelArtefact
    out_dir: Path | None  # where it was written, for the registry to copy it from
    parent: str | None  # the version the candidate is to succeed
    episodes: int
    excluded_windows: int
    data_span: tuple[float, float]  # event times of the data, first and last
    report: dict[str, Any]


def recent_events(batches: Iterable[Decoded], limit: int) -> list[Decoded]:
    """The last `limit` events of the batches (rejects dropped: training does not read them),
    holding no more than `limit` events plus one batch at a time."""
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


def data_span(batches: Sequence[Decoded]) -> tuple[float, float]:
    """The earliest and latest event time among the batches (events may arrive out of order)."""
    stamps = [decoded.batch.ts for decoded in batches if len(decoded.batch)]
    if not stamps:
        raise ValueError("no events to retrain on")
    return min(float(ts.min()) for ts in stamps), max(float(ts.max()) for ts in stamps)


def retrain(
    batches: Iterable[Decoded],
    settings: Settings,
    parent: str | None = None,
    labelled: Iterable[Span] = (),
    out_dir: Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    *,
    episodes: Iterable[Span] = (),
) -> RetrainResult:
    """A candidate to succeed version `parent`, trained by `train` (same settings, same seed)
    on `batches` less the windows overlapping the `episodes` (e.g. `episode_spans` of the
    alerts published) and the `labelled` spans (true positives, e.g.
    `FeedbackLedger.labelled_spans()`).

    Raises ValueError, as `train` does, when too little data is left to train on."""
    started = time.perf_counter()
    data = [decoded for decoded in batches if len(decoded.batch)]
    span = data_span(data)
    episodes, labelled = list(episodes), list(labelled)
    exclude = ExcludedSpans.from_pairs(episodes + labelled)
    log.info(
        "retrain: spans left out",
        parent=parent,
        episodes=len(episodes),
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
        "episodes": len(episodes),
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
        episodes=len(episodes),
        excluded_windows=training["excluded_windows"],
        data_span=span,
        report=report,
    )


def register_candidate(registry: ModelRegistry, result: RetrainResult, source: str) -> ModelEntry:
    """Put a retrained candidate into the registry, its parent the version it was trained to
    succeed, with its report under RETRAIN_REPORT."""
    if result.out_dir is None:
        raise ValueError("a candidate is registered from the directory it was written to")
    entry = registry.register(
        result.out_dir, source=source, parent=result.parent, data_span=result.data_span
    )
    registry.attach_report(entry.version, RETRAIN_REPORT, result.report)
    return entry
