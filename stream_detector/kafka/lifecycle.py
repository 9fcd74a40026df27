"""The model lifecycle inside `run`: follow the registry, retrain when due, shadow, promote.

Every replica follows the registry's active version: every `lifecycle.poll_interval_s` it reads
the registry, and when the active version differs from the one it serves it swaps models before
its next batch (`Detector.swap_model`), publishing the resolves of the episodes the old model had
open with that batch. The registry is the one source of truth, so a promotion or a rollback made
anywhere (`stream-detector models`, or a replica's own verdict) reaches every replica.

With `lifecycle.retrain`, the replica that owns partition 0 of the first input topic also keeps
its recent events and, when drift makes retraining due, trains a candidate on them in a
background thread (the training code path of `train`, without the windows of alert episodes or
of episodes marked true positive) and registers it with the active version as its parent. Every
replica shadows a registered candidate of its active version that has no verdict yet, on its own
keys, so each has the candidate's thresholds warm when it is promoted. The retraining replica
judges: after `lifecycle.shadow_windows` compared windows it attaches the shadow report to the
candidate in the registry, and promotes it when the verdict passes and `lifecycle.auto_promote`
is set.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from stream_detector.config import Settings
from stream_detector.detector.artefact import (
    ArtefactError,
    ModelArtefact,
    load_artefact_and_settings,
)
from stream_detector.detector.drift import DriftFigures
from stream_detector.detector.facade import Detector
from stream_detector.detector.recent import RecentEpisodes, RecentEvents
from stream_detector.detector.registry import ModelRegistry, RegistryError
from stream_detector.detector.retrain import (
    RETRAIN_REPORT,
    RetrainResult,
    register_candidate,
    retrain,
)
from stream_detector.engine.alerts import Alert
from stream_detector.engine.types import EventBatch
from stream_detector.kafka.telemetry import ServiceMetrics

log = structlog.get_logger(__name__)

# The name of the report a shadow period leaves on its candidate in the registry.
SHADOW_REPORT = "shadow"


@dataclass
class _Training:
    """A retrain running in the background; `result` or `error` once it is done."""

    out: Path  # where the candidate is written; removed once it is in the registry
    thread: threading.Thread = field(init=False)
    result: RetrainResult | None = None
    error: str | None = None


class ModelLifecycle:
    """Called by the service loop around each batch; not thread-safe (the loop's thread)."""

    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        registry: ModelRegistry,
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.config = settings.lifecycle
        self.detector = detector
        self.registry = registry
        self.metrics = metrics
        self.recent = RecentEvents(self.config.retrain_max_events) if self.config.retrain else None
        self.episodes = RecentEpisodes()
        self._last_poll = time.monotonic()
        self._last_retrain = -float("inf")
        self._training: _Training | None = None
        self._refused: set[str] = set()  # versions that failed to load

    def start(self) -> None:
        """A registry with no active version gets the running model as its first one."""
        self.registry.refresh()
        if self.registry.active() is not None:
            return
        version = self.detector.model_version
        path = self.settings.model.path
        if path is None:
            return
        self.registry.register(Path(path), source="run", parent=None, data_span=None)
        try:
            self.registry.promote(version, "the first model the service ran")
        except RegistryError:
            # Another replica starting at the same moment promoted first; it is the active
            # version either way, or the swap at the first batch follows the other's choice.
            self.registry.refresh()
            active = self.registry.active()
            log.info("model registered; another replica promoted first", active=active)
            return
        log.info("model registered and promoted", model_version=version, source="run")

    def before_batch(self) -> list[Alert]:
        """Swap to the registry's active version when it changed (every poll_interval_s);
        returns the resolve alerts of the episodes the old model had open."""
        now = time.monotonic()
        if now - self._last_poll < self.config.poll_interval_s:
            return []
        self._last_poll = now
        try:
            self.registry.refresh()
            active = self.registry.active()
        except RegistryError as exc:
            log.warning("model registry unreadable; serving on", error=str(exc))
            return []
        if active is None or active == self.detector.model_version:
            self._follow_candidate(active)
            return []
        # A promoted shadow is in memory already: no second load of the same artefact.
        shadow = self.detector.shadow
        if shadow is not None and shadow.version == active:
            artefact: ModelArtefact | None = shadow.artefact
        else:
            artefact = self._load(active)
        if artefact is None:
            return []
        previous = self.detector.model_version
        alerts = self.detector.swap_model(artefact)
        self.metrics.model_swapped(previous, active)
        return alerts

    def _follow_candidate(self, active: str | None) -> None:
        """Shadow the candidate the registry holds for the active version, as every replica
        does: each warms the candidate's thresholds up on its own keys, so that a promotion
        finds them warm everywhere. A candidate with a verdict is no longer shadowed."""
        candidate = None if active is None else self._candidate_of(active)
        shadow = self.detector.shadow
        if shadow is not None and shadow.version != candidate:
            self.detector.stop_shadow()
            shadow = None
        if candidate is None or shadow is not None:
            return
        artefact = self._load(candidate)
        if artefact is not None:
            self.detector.start_shadow(artefact)

    def _candidate_of(self, active: str) -> str | None:
        """The newest retrained version whose parent is `active`, never active itself (one
        rolled back from stays out), with no shadow verdict yet or a passing one (waiting to
        be promoted)."""
        served = {record.version for record in self.registry.history()}
        waiting = [
            entry.version
            for entry in self.registry.entries()
            if entry.parent == active
            and entry.version not in served
            and RETRAIN_REPORT in entry.reports
            and entry.reports.get(SHADOW_REPORT, {}).get("verdict", "pass") == "pass"
        ]
        return waiting[-1] if waiting else None

    def after_batch(
        self, events: EventBatch, alerts: list[Alert], drift: DriftFigures, leader: bool
    ) -> None:
        """Keep the recent events and the episodes raised on them, start a retrain when due,
        and judge a shadow that is done."""
        if self.recent is None:
            return
        # Every replica follows its episodes: one that becomes the leader must know how those
        # it raised before ended.
        self.episodes.observe(alerts)
        if not leader:
            return
        self.recent.add(events)
        self.episodes.forget_before(self.recent.oldest())
        self._collect_training()
        shadow = self.detector.shadow
        if shadow is not None and shadow.done and not shadow.concluded:
            self._conclude_shadow()
        elif shadow is None and self._training is None and self._retrain_due(drift):
            self._start_training(drift)

    def close(self) -> None:
        if self._training is not None:
            self._training.thread.join()
        self.registry.close()

    # -- retraining ------------------------------------------------------------------------------

    def _retrain_due(self, drift: DriftFigures) -> bool:
        if not drift.retrain_due or self.recent is None:
            return False
        if len(self.recent) < self.config.retrain_min_events:
            return False
        return time.monotonic() - self._last_retrain >= self.config.retrain_cooldown_s

    def _start_training(self, drift: DriftFigures) -> None:
        assert self.recent is not None
        self._last_retrain = time.monotonic()
        batches = self.recent.batches()
        # The episodes this service raised (not those a cold replay would find: a fresh
        # detector judges every key on the global threshold until it warms up) and those
        # operators marked true positive.
        episodes = self.episodes.spans()
        labelled = self.detector.feedback.labelled_spans()
        parent = self.detector.model_version
        # Registering copies the candidate into the registry; the temporary copy goes after.
        out = Path(tempfile.mkdtemp(prefix="sd-candidate-"))
        training = _Training(out)

        def work() -> None:
            try:
                training.result = retrain(
                    batches, self.settings, parent, labelled, out, episodes=episodes
                )
            except (ValueError, ArtefactError, RuntimeError) as exc:
                training.error = str(exc)

        training.thread = threading.Thread(target=work, name="sd-retrain", daemon=True)
        self._training = training
        self.metrics.retrains.labels(outcome="started").inc()
        log.info(
            "retrain started",
            reason=drift.reason,
            events=sum(len(b.batch) for b in batches),
            episodes=len(episodes),
            true_positives=len(labelled),
            active=self.detector.model_version,
        )
        training.thread.start()

    def _collect_training(self) -> None:
        training = self._training
        if training is None or training.thread.is_alive():
            return
        self._training = None
        try:
            self._register(training)
        finally:
            shutil.rmtree(training.out, ignore_errors=True)

    def _register(self, training: _Training) -> None:
        """Put a finished retrain's candidate in the registry and start shadowing it."""
        if training.result is None:
            self.metrics.retrains.labels(outcome="failed").inc()
            log.warning("retrain failed; the active model stays", error=training.error)
            return
        result = training.result
        candidate = result.artefact
        version = candidate.metadata.model_version
        try:
            register_candidate(self.registry, result, "retrain:stream")
        except RegistryError as exc:
            self.metrics.retrains.labels(outcome="failed").inc()
            log.warning("candidate not registered; the active model stays", error=str(exc))
            return
        self.metrics.retrains.labels(outcome="finished").inc()
        log.info("retrain finished", candidate=version, report=result.report)
        self.detector.start_shadow(candidate)

    def _conclude_shadow(self) -> None:
        """Record the verdict on the candidate; a pass stays in the shadow until it is promoted
        (its thresholds go on learning, and the swap keeps them), a fail stops."""
        shadow = self.detector.shadow
        assert shadow is not None
        report = shadow.report()
        shadow.concluded = True
        version = shadow.version
        self.metrics.shadow_verdicts.labels(verdict=report["verdict"]).inc()
        log.info(
            "shadow verdict",
            candidate=version,
            verdict=report["verdict"],
            why=report["why"],
            compared_windows=report["compared_windows"],
            key_agreement=report["key_agreement"],
            candidate_figures=report["candidate"],
            active_figures=report["active"],
        )
        if report["verdict"] != "pass":
            self.detector.stop_shadow()
        try:
            self.registry.attach_report(version, SHADOW_REPORT, report)
            if report["verdict"] == "pass" and self.config.auto_promote:
                self.registry.promote(version, f"shadow verdict: {report['why']}")
                log.info("model promoted", model_version=version, reason=report["why"])
                self._last_poll = -float("inf")  # swap at the next batch
        except RegistryError as exc:
            log.warning("shadow report or promotion not recorded", error=str(exc))

    def _load(self, version: str) -> ModelArtefact | None:
        try:
            directory = self.registry.artefact_dir(version)
            artefact, _ = load_artefact_and_settings(
                directory, self.settings, self.detector.device
            )
        except (ArtefactError, RegistryError) as exc:
            if version not in self._refused:  # said once, not at every poll
                self._refused.add(version)
                self.metrics.model_load_failures.inc()
                log.error(
                    "registry model cannot be served; the current model stays",
                    model_version=version,
                    error=str(exc),
                )
            return None
        return artefact
