"""One model's verdicts on staged windows: its scores, each key's threshold for them, episodes.

Everything here depends on the model version: scores are in the units of one model's
reconstruction error, so the per-key thresholds learnt from them and the episodes (whose ids
carry the version) belong to it too. The window stage before it (ring buffers, per-key
normalisation) does not, which is what lets the detector swap models, or run a candidate in the
shadow of the active one, while every key keeps its windows.
"""

from __future__ import annotations

import numpy as np
import structlog
import torch

from stream_detector.config import Settings
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.detector.feedback import FeedbackLedger
from stream_detector.engine.alerts import Alert
from stream_detector.engine.episodes import EpisodeTracker
from stream_detector.engine.model import WindowScorer
from stream_detector.engine.normalize import KeyNormalizer
from stream_detector.engine.stage import CutWindows, StagedWindows, WindowStage
from stream_detector.engine.threshold import AdaptiveThreshold
from stream_detector.engine.types import ScoredWindows

log = structlog.get_logger(__name__)


def empty_scored(n_features: int) -> ScoredWindows:
    f32 = np.empty(0, dtype=np.float32)
    return ScoredWindows(
        slots=np.empty(0, dtype=np.int64),
        keys=np.empty(0, dtype=object),
        event_index=np.empty(0, dtype=np.int64),
        start_ts=np.empty(0, dtype=np.float64),
        end_ts=np.empty(0, dtype=np.float64),
        scores=f32,
        thresholds=f32,
        exceed=np.empty(0, dtype=bool),
        feature_errors=np.empty((0, n_features), dtype=np.float32),
        actual=np.empty((0, n_features), dtype=np.float32),
        expected=np.empty((0, n_features), dtype=np.float32),
        flat=np.empty((0, n_features), dtype=bool),
    )


class ModelJudge:
    """A model with the per-key state that is in its units: thresholds and episodes.

    Its threshold and episode arrays follow the window stage's slots once `attach`ed: under the
    names "threshold" and "episodes" (in snapshots) for the active model, under others, and out
    of snapshots, for a shadow.
    """

    def __init__(
        self, settings: Settings, artefact: ModelArtefact, device: torch.device
    ) -> None:
        meta = artefact.metadata
        self.metadata = meta
        self.model_version = meta.model_version
        self.feature_names = tuple(settings.input.value_fields)
        self.scorer = WindowScorer.serving(artefact.model.to(device), device, settings)
        # No slots of their own: the stage sizes them to the store and keeps them in step.
        self.threshold = AdaptiveThreshold(settings.threshold, meta.global_threshold, capacity=0)
        self.episodes = EpisodeTracker(
            settings.episodes, self.feature_names, self.model_version, capacity=0
        )
        # The keys a first event of which is no news: None while the rule is off.
        self.known_keys: frozenset[str] | None = None
        if settings.episodes.alert_new_keys:
            if meta.training_keys is None:
                log.warning(
                    "episodes.alert_new_keys is on, but the model records no training keys "
                    "(trained by an older version): no key is alerted as new; retrain the model "
                    "with this version",
                    model_version=self.model_version,
                )
            else:
                self.known_keys = frozenset(meta.training_keys)

    def without_episodes(self, settings: Settings) -> ModelJudge:
        """This judge with its thresholds as learnt, and no episode open or pending: a shadow's
        episodes were never published, so none of them may resolve in public."""
        self.episodes = EpisodeTracker(
            settings.episodes, self.feature_names, self.model_version, capacity=0
        )
        return self

    def attach(self, stage: WindowStage, prefix: str = "", *, snapshot: bool = True) -> None:
        stage.add_slot_stage(prefix + "threshold", self.threshold, snapshot=snapshot)
        stage.add_slot_stage(prefix + "episodes", self.episodes, snapshot=snapshot)

    @staticmethod
    def detach(stage: WindowStage, prefix: str) -> None:
        stage.remove_slot_stage(prefix + "threshold")
        stage.remove_slot_stage(prefix + "episodes")

    def open_new_keys(self, cut: CutWindows, offset: int) -> list[Alert]:
        """Open alerts for the keys the model was not trained on that took a fresh slot in
        this step, at their first event (event indices count from the whole batch's start, as
        in `score`); none while the rule is off."""
        rows = cut.report.new_key_rows
        if self.known_keys is None or len(rows) == 0:
            return []
        keys = cut.batch.keys[rows]
        known = self.known_keys
        unknown = np.fromiter((key not in known for key in keys.tolist()), bool, len(keys))
        rows = rows[unknown]
        return self.episodes.open_new_keys(
            cut.report.event_slots[rows],
            keys[unknown],
            cut.batch.ts[rows],
            rows + offset,
            self.threshold.warmup_threshold,
        )

    def score(
        self,
        staged: StagedWindows,
        offset: int,
        feedback: FeedbackLedger,
        normalizer: KeyNormalizer,
        warm: np.ndarray | None = None,
    ) -> ScoredWindows:
        """Score, and judge, the staged windows; event indices count from the whole batch's
        start (`offset` is where the staged piece began). `warm` (bool, one per staged window)
        is set to whether each was judged by its key's own threshold."""
        due = staged.due
        if len(due) == 0:
            return empty_scored(len(self.feature_names))
        result = self.scorer.score(staged.normalised)
        adjust = feedback.adjustments(
            due.keys, due.end_ts, self.model_version, result.feature_errors, self.feature_names
        )
        divisor, floor, learn = (
            (None, None, None) if adjust is None else (adjust.divisor, adjust.floor, adjust.learn)
        )
        # A flat line exceeds whatever its score (it is reconstructed too well to score high),
        # and its low scores are not the key's normal: they are not learnt.
        flat = staged.flat.any(axis=1)
        if flat.any():
            learn = ~flat if learn is None else learn & ~flat
        thresholds, exceed = self.threshold.apply(
            due.slots, result.scores, divisor, floor, learn, warm
        )
        exceed |= flat
        expected = normalizer.denormalize(result.last_reconstruction, staged.mean, staged.std)
        return ScoredWindows(
            slots=due.slots,
            keys=due.keys,
            event_index=due.event_index + offset,
            start_ts=due.start_ts,
            end_ts=due.end_ts,
            scores=result.scores,
            thresholds=thresholds,
            exceed=exceed,
            feature_errors=result.feature_errors,
            # The window's newest row is the event that completed it, already on the host.
            actual=staged.batch.values[due.event_index],
            expected=expected.astype(np.float32, copy=False),
            flat=staged.flat,
        )
