"""A candidate model scoring the live windows beside the active one, publishing nothing.

The candidate judges the very windows the active model judges (same ring buffers, same per-key
normalisation), with thresholds and episodes of its own kept out of snapshots; what it would have
alerted is only counted. Each key's first `threshold.warmup` windows warm the candidate's
threshold for it up (a promotion keeps what it learnt) and are not compared: the candidate would
be judged on its global threshold there, which no key is judged on for long. Over the next
`lifecycle.shadow_windows` windows of warm keys, the report compares the two: episodes each
opened, on which keys they agree, how each model's scores sit against its own training
calibration (score PSI, median ratio), and the inference time each took.

The verdict: the candidate passes when it opened at most `promote_max_alert_ratio` x the active
model's episodes and its scores are closer to its calibration than the active model's to its
own (a lower PSI): on data that drifted, the retrained model is the one that still recognises
normal.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from stream_detector.config import LifecycleConfig, Settings
from stream_detector.detector.artefact import ModelArtefact, ModelMetadata
from stream_detector.detector.drift import DriftMonitor
from stream_detector.detector.feedback import FeedbackLedger
from stream_detector.detector.judge import ModelJudge
from stream_detector.engine.alerts import Alert
from stream_detector.engine.normalize import KeyNormalizer
from stream_detector.engine.stage import StagedWindows
from stream_detector.engine.types import ScoredWindows

SHADOW_PREFIX = "shadow."


@dataclass
class _Side:
    """What one model did during the shadow period."""

    version: str
    drift: DriftMonitor
    opens: int = 0
    seconds: float = 0.0
    keys: set[str] = field(default_factory=set)  # keys it opened an episode on

    def observe(self, scored: ScoredWindows, alerts: list[Alert], seconds: float) -> None:
        self.drift.update(scored)
        self.seconds += seconds
        opened = [a.key for a in alerts if a.kind == "open"]
        self.opens += len(opened)
        self.keys.update(opened)

    def summary(self, windows: int) -> dict[str, Any]:
        figures = self.drift.figures()
        return {
            "model_version": self.version,
            "episodes_opened": self.opens,
            "keys_alerted": len(self.keys),
            "score_psi": _finite(figures.psi),
            "median_ratio": _finite(figures.median_ratio),
            "over_threshold_share": _finite(figures.over_threshold_share),
            "model_ms_per_1000_windows": (
                round(1e6 * self.seconds / windows, 3) if windows else None
            ),
        }


def _finite(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), 6)


def _monitor(settings: Settings, meta: ModelMetadata) -> DriftMonitor:
    # Every window of the shadow period counts: it is short, and both sides see the same ones.
    drift = settings.drift.model_copy(update={"min_windows": 1})
    return DriftMonitor.of_model(drift, meta, per_feature=False)


class ShadowRun:
    """The candidate's judge and the two sides' tallies; the detector feeds it every piece."""

    def __init__(
        self,
        settings: Settings,
        candidate: ModelArtefact,
        active: ModelMetadata,
        device: torch.device,
    ) -> None:
        self.config: LifecycleConfig = settings.lifecycle
        self.artefact = candidate  # what a promotion of this version swaps in
        self.judge = ModelJudge(settings, candidate, device)
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.concluded = False  # its verdict is recorded (it may shadow on until promoted)
        self.windows = 0  # every window the candidate judged
        self.compared = 0  # of those, the ones of keys whose candidate threshold was warm
        self.active = _Side(active.model_version, _monitor(settings, active))
        meta = candidate.metadata
        self.candidate = _Side(meta.model_version, _monitor(settings, meta))

    @property
    def version(self) -> str:
        return self.judge.model_version

    @property
    def done(self) -> bool:
        return self.compared >= self.config.shadow_windows

    def observe(
        self,
        staged: StagedWindows,
        offset: int,
        feedback: FeedbackLedger,
        normalizer: KeyNormalizer,
        active: tuple[ScoredWindows, list[Alert], float],
    ) -> None:
        """Judge the staged piece with the candidate, beside the active model's result for it
        (its scored windows, alerts and model seconds)."""
        # Compared: the windows the candidate judged by a key's own threshold (those that warm
        # it up are the candidate's to learn from), window by window, whatever the batching.
        warm = np.zeros(len(staged.due), dtype=bool)
        started = time.perf_counter()
        scored = self.judge.score(staged, offset, feedback, normalizer, warm)
        alerts = self.judge.episodes.update(scored)
        seconds = time.perf_counter() - started
        self.windows += len(scored)
        if not warm.any():
            return
        compared = set(zip(scored.keys[warm].tolist(), scored.event_index[warm].tolist()))
        active_scored, active_alerts, active_seconds = active
        share = float(warm.mean())
        self.compared += int(warm.sum())
        self.candidate.observe(scored.select(warm), _of(alerts, compared), seconds * share)
        self.active.observe(
            active_scored.select(warm), _of(active_alerts, compared), active_seconds * share
        )

    def report(self) -> dict[str, Any]:
        """The comparison so far, with the verdict."""
        active = self.active.summary(self.compared)
        candidate = self.candidate.summary(self.compared)
        union = self.active.keys | self.candidate.keys
        passed, why = self._verdict(active, candidate)
        return {
            "candidate": candidate,
            "active": active,
            "windows": self.windows,
            "compared_windows": self.compared,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "key_agreement": (
                round(len(self.active.keys & self.candidate.keys) / len(union), 4)
                if union
                else 1.0
            ),
            "verdict": "pass" if passed else "fail",
            "why": why,
        }

    def _verdict(self, active: dict[str, Any], candidate: dict[str, Any]) -> tuple[bool, str]:
        allowed = self.config.promote_max_alert_ratio * active["episodes_opened"]
        if candidate["episodes_opened"] > allowed:
            return False, (
                f"the candidate opened {candidate['episodes_opened']} episodes, more than "
                f"{self.config.promote_max_alert_ratio:g} x the active model's "
                f"{active['episodes_opened']} (lifecycle.promote_max_alert_ratio)"
            )
        mine, theirs = candidate["score_psi"], active["score_psi"]
        if mine is None or theirs is None:
            return False, "no score PSI to compare (a model without calibration quantiles)"
        if mine >= theirs:
            return False, (
                f"the candidate's scores are no closer to its calibration (PSI {mine:g}) than "
                f"the active model's to its own ({theirs:g})"
            )
        return True, (
            f"opened {candidate['episodes_opened']} episodes against "
            f"{active['episodes_opened']}, score PSI {mine:g} against {theirs:g}"
        )


def _of(alerts: list[Alert], windows: set[tuple[str, int]]) -> list[Alert]:
    """The alerts raised by one of `windows` (key, event index)."""
    return [alert for alert in alerts if (alert.key, alert.event_index) in windows]
