"""The engine facade: one call takes a decoded batch through windows, model, threshold and episodes.

Everything that runs the detector (the Kafka service, replay, evaluate, the demo, tests) goes
through `Detector.process`, so a score seen in a back-test is the score the service would compute.
All per-key state is held in arrays indexed by the window store's slot. The threshold and the
episodes (the model's judge, detector/judge.py) join the window stage's per-slot stages, so
whatever frees or grows slots (an ingest, idle keys, `drop`, `restore`) reaches all of them
through `WindowStage.sync_slots`. The judge can be swapped for another model's between batches,
and a candidate can judge the same windows in its shadow (detector/shadow.py).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import torch

from stream_detector.aggregate.decoder import AggregatingDecoder, decoder_for
from stream_detector.aggregate.streams import SINGLE_STREAM, StreamAggregators
from stream_detector.config import ConfigError, Settings
from stream_detector.detector.artefact import (
    ModelArtefact,
    ModelMetadata,
    load_artefact_and_settings,
)
from stream_detector.detector.feedback import FeedbackLedger
from stream_detector.detector.judge import ModelJudge, empty_scored
from stream_detector.detector.shadow import SHADOW_PREFIX, ShadowRun
from stream_detector.detector.snapshot import EngineSnapshot
from stream_detector.engine.alerts import Alert
from stream_detector.engine.model import ring_device, select_device
from stream_detector.engine.stage import WindowStage
from stream_detector.engine.types import Decoded, ScoredWindows

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DetectionResult:
    """What one batch caused: its rejects (inside `decoded`), its scored windows and its alerts."""

    decoded: Decoded
    scored: ScoredWindows
    alerts: list[Alert]
    model_seconds: float
    muted: int = 0  # alerts the operators' mutes kept from `alerts`


class Detector:
    """Stateful per-key anomaly detector over batches of events; not thread-safe."""

    def __init__(
        self, settings: Settings, artefact: ModelArtefact, device: torch.device | None = None
    ) -> None:
        meta = artefact.metadata
        self.settings = settings
        # In aggregate mode this decoder turns raw events into closed per-key buckets.
        self.decoder = decoder_for(settings)
        self.feature_names = tuple(settings.input.value_fields)
        self.device = device if device is not None else select_device(settings.model.device)
        n_features = len(self.feature_names)
        # Device-resident: the ring's values sit on the model's device, so windows are cut,
        # normalised and scored there and only each batch's new values cross per batch.
        ring_on = ring_device(settings.model.device_resident, self.device)
        self._stage = WindowStage(
            settings, meta.norm_mean, meta.norm_std, settings.window.stride, device=ring_on
        )
        self._windows = self._stage.store
        self._normalizer = self._stage.normalizer
        # The model and what is in its units (thresholds, episodes); `swap_model` replaces it.
        self._judge = ModelJudge(settings, artefact, self.device)
        self._judge.attach(self._stage)
        self._shadow: ShadowRun | None = None
        # Operator feedback: empty until the service (or evaluate --feedback) applies some.
        self.feedback = FeedbackLedger(settings.feedback)
        self._n_features = n_features
        log.info(
            "detector ready",
            model_version=self.model_version,
            device=str(self.device),
            device_resident=ring_on is not None,
            features=list(self.feature_names),
            window=settings.window.size,
            stride=settings.window.stride,
            score_steps=settings.window.score_steps or settings.window.size,
        )

    @property
    def model_version(self) -> str:
        return self._judge.model_version

    @property
    def metadata(self) -> ModelMetadata:
        """What the model learnt besides its weights (calibration, training record), for
        monitoring against it, e.g. drift."""
        return self._judge.metadata

    @property
    def n_keys(self) -> int:
        return self._windows.n_keys

    @property
    def open_episodes(self) -> int:
        return self._judge.episodes.open_episodes

    @property
    def out_of_order_total(self) -> int:
        """Events accepted although earlier than an event of their key before them."""
        return self._windows.out_of_order_total

    @property
    def keys_seen_total(self) -> int:
        """Keys per ingest step, each counted once per step it appears in."""
        return self._windows.keys_seen_total

    @property
    def keys_new_total(self) -> int:
        """Of `keys_seen_total`, those that held no slot before: never seen, or evicted since."""
        return self._windows.keys_new_total

    @property
    def evicted_total(self) -> int:
        return self._windows.evicted_lru_total + self._windows.evicted_idle_total

    def process_messages(
        self,
        payloads: Sequence[bytes],
        keys: Sequence[bytes | None] | None = None,
        broker_ts_ms: Sequence[int] | np.ndarray | None = None,
        streams: Sequence[int] | np.ndarray | None = None,
    ) -> DetectionResult:
        """Decode raw Kafka messages and run them through the engine.

        `streams`: each message's source stream, an int code per message (the Kafka service
        passes `ConsumedBatch.stream_codes`, its topic-partitions' codes); None is one stream.
        Only aggregate mode uses it, to keep one watermark per input partition.
        """
        decoded = self.decoder.decode_messages(payloads, keys, broker_ts_ms, streams=streams)
        return self.process(decoded)

    def process(self, decoded: Decoded) -> DetectionResult:
        """Run a decoded batch through the engine; the result is the same for any cut of the
        stream into batches.

        The batch is taken in the steps `WindowStage.pieces` would take (as few as give the same
        result as one event at a time), each finished before the next; within a step, the open
        episodes of the keys it evicted are resolved before their slots are reset."""
        batch = decoded.batch
        if len(batch) == 0:
            return DetectionResult(decoded, empty_scored(self._n_features), [], 0.0)
        scored_parts: list[ScoredWindows] = []
        alerts: list[Alert] = []
        model_seconds = 0.0
        offset = 0
        while len(batch):
            cut = self._stage.cut(batch)
            alerts += self._evict(cut.report.freed_slots, cut.report.freed_keys)
            # Opened before the step's windows are judged: a key's first event precedes them.
            new_keys = self._judge.open_new_keys(cut, offset)
            if self._shadow is not None:  # its episodes too, so both sides' opens compare alike
                self._shadow.judge.open_new_keys(cut, offset)
            staged = self._stage.normalise(cut)
            started = time.perf_counter()
            scored = self._judge.score(staged, offset, self.feedback, self._normalizer)
            seconds = time.perf_counter() - started
            model_seconds += seconds
            piece_alerts = self._judge.episodes.update(scored)
            if self._shadow is not None:
                self._shadow.observe(
                    staged, offset, self.feedback, self._normalizer, (scored, piece_alerts, seconds)
                )
            if new_keys:
                piece_alerts = sorted(new_keys + piece_alerts, key=lambda a: a.event_index)
            alerts += piece_alerts
            if len(scored):
                scored_parts.append(scored)
            alerts += self._evict(*self._windows.release_silent())
            offset += cut.report.taken
            batch = batch.rows(cut.report.taken)
        scored = _concat(scored_parts) if scored_parts else empty_scored(self._n_features)
        alerts, muted = self.feedback.unmuted(alerts)
        return DetectionResult(decoded, scored, alerts, model_seconds, muted)

    def snapshot(self, keys: Collection[str], stream: int = SINGLE_STREAM) -> EngineSnapshot:
        """The state of those of `keys` that are tracked (evicted or unseen ones are skipped),
        and in aggregate mode the whole bucket aggregator of `stream` (the input partition the
        keys came from: its open buckets, watermark and idling keys).

        The arrays are copies, so the detector can go on while the snapshot is written out.
        """
        tracked, slots = self._windows.registry.tracked(np.asarray(list(keys), dtype=object))
        arrays = {
            f"{prefix}.{name}": array
            for prefix, stage in self._stage.slot_stages.items()
            for name, array in stage.export_slots(slots).items()
        }
        watermark, seq = self._windows.clock
        aggregators = self.aggregators()
        buckets = None if aggregators is None else aggregators.export_state(stream)
        return EngineSnapshot(tracked, arrays, watermark, seq, stream, buckets)

    def restore(self, snapshot: EngineSnapshot) -> int:
        """Take over the snapshot's keys, replacing any of them tracked here, and in aggregate
        mode its stream's bucket aggregator; returns how many keys were restored. Raises
        ValueError, before changing anything, for a malformed snapshot."""
        aggregators = self.aggregators()
        if (aggregators is None) != (snapshot.buckets is None):
            raise ValueError("snapshot and detector disagree on input.mode (bucket state)")
        if aggregators is not None and snapshot.buckets is not None:
            aggregators.check_state(snapshot.buckets)
        stages = self._stage.slot_stages
        parts: dict[str, dict[str, np.ndarray]] = {prefix: {} for prefix in stages}
        for name, array in snapshot.arrays.items():
            prefix, _, field = name.partition(".")
            if prefix not in parts:
                raise ValueError(f"snapshot array {name!r} belongs to no engine stage")
            parts[prefix][field] = array
        for prefix, stage in stages.items():
            stage.check_import(parts[prefix], len(snapshot))
        rows, slots = self._windows.import_keys(
            snapshot.keys, parts.pop("windows"), (snapshot.watermark, snapshot.seq)
        )
        # New keys may have grown the store: the other stages grow with it before their rows
        # are written. Nothing was freed (a key tracked here is overwritten in its own slot).
        self._stage.sync_slots(np.empty(0, dtype=np.int64))
        for prefix, state in parts.items():
            stages[prefix].import_slots(slots, {name: array[rows] for name, array in state.items()})
        if aggregators is not None and snapshot.buckets is not None:
            aggregators.import_state(snapshot.stream, snapshot.buckets)
        return len(rows)

    def drop(self, keys: Collection[str], streams: Collection[int] = ()) -> int:
        """Forget the given keys and, in aggregate mode, the bucket aggregators of `streams`,
        e.g. those of partitions handed to another instance; returns how many keys were
        tracked. Their open episodes end without a resolve alert here: the new owner restores
        them from the checkpoint and resolves them."""
        freed = self._windows.release_keys(np.asarray(list(keys), dtype=object))
        self._stage.sync_slots(freed)
        aggregators = self.aggregators()
        if aggregators is not None:
            aggregators.drop(streams)
        return len(freed)

    def aggregators(self) -> StreamAggregators | None:
        """Aggregate mode's per-stream bucket aggregators (state that precedes the windows)."""
        return self.decoder.aggregator if isinstance(self.decoder, AggregatingDecoder) else None

    def _evict(self, freed: np.ndarray, freed_keys: np.ndarray) -> list[Alert]:
        """Bring the per-slot stages in step with the store after evictions (and growth), and
        return the resolve alerts of the episodes open on the evicted keys, read first."""
        alerts = self._judge.episodes.resolve_evicted(freed, freed_keys)
        if self._shadow is not None:  # its episodes are only counted: nothing to resolve
            self._shadow.judge.episodes.resolve_evicted(freed, freed_keys)
        self._stage.sync_slots(freed)
        return alerts

    # -- the model lifecycle ------------------------------------------------------------

    def swap_model(self, artefact: ModelArtefact) -> list[Alert]:
        """Serve with another model from the next batch on; returns the resolve alerts of the
        episodes that were open (reason "model_changed").

        Every key keeps its windows and normalisation (they do not depend on the model), and
        its episodes start closed. Its threshold was learnt from another model's scores: when
        the new model ran in the shadow until now, the thresholds it learnt there are kept (the
        shadow becomes the active model); otherwise each key warms up again on the new model's
        calibrated global threshold.
        """
        occupied = np.flatnonzero(self._windows.registry.occupied)
        keys = self._windows.registry.keys_of(occupied)
        alerts = self._judge.episodes.resolve_open(occupied, keys, "model_changed")
        previous = self._judge.model_version
        shadow = self._shadow
        if shadow is not None and shadow.version == artefact.metadata.model_version:
            # The shadow's thresholds were learnt from this model's scores on these very keys.
            self.stop_shadow()
            self._judge = shadow.judge.without_episodes(self.settings)
            thresholds = "kept from the shadow period"
        else:
            self._judge = ModelJudge(self.settings, artefact, self.device)
            thresholds = "warming up"
        self._judge.attach(self._stage)
        log.info(
            "model swapped",
            previous=previous,
            model_version=self._judge.model_version,
            keys=len(occupied),
            episodes_resolved=len(alerts),
            thresholds=thresholds,
        )
        return alerts

    def start_shadow(self, candidate: ModelArtefact) -> None:
        """Score every window with `candidate` too, from the next batch on, publishing nothing;
        `shadow_report` compares the two."""
        self.stop_shadow()
        self._shadow = ShadowRun(self.settings, candidate, self.metadata, self.device)
        self._shadow.judge.attach(self._stage, SHADOW_PREFIX, snapshot=False)
        log.info(
            "shadow scoring started", candidate=self._shadow.version, active=self.model_version
        )

    @property
    def shadow(self) -> ShadowRun | None:
        return self._shadow

    def stop_shadow(self) -> None:
        if self._shadow is not None:
            ModelJudge.detach(self._stage, SHADOW_PREFIX)
            self._shadow = None


def _concat(parts: list[ScoredWindows]) -> ScoredWindows:
    """One ScoredWindows of several pieces' (in order); a single piece is passed through."""
    if len(parts) == 1:
        return parts[0]
    return ScoredWindows(
        **{
            name: np.concatenate([getattr(part, name) for part in parts])
            for name in ScoredWindows.__dataclass_fields__
        }
    )


def load_detector(
    settings: Settings, model_dir: Path | None = None, device: torch.device | None = None
) -> Detector:
    """The detector every front door serves with: the artefact at `model_dir` (or `model.path`),
    verified against `settings`, on `device` (or the one `model.device` selects, chosen once and
    logged). Raises ConfigError when no model is named, ArtefactError when it does not fit.

    The input mapping settings that `settings` does not give are the artefact's (logged), so the
    detector's decoder reads data as training did; `Detector.settings` holds what it runs with.
    """
    path = model_dir if model_dir is not None else settings.model.path
    if path is None:
        raise ConfigError(
            "no model given: train one with `stream-detector train --out DIR`, then pass "
            "--model DIR or set [model] path = DIR in the config file"
        )
    chosen = device if device is not None else select_device(settings.model.device)
    artefact, completed = load_artefact_and_settings(Path(path), settings, chosen)
    return Detector(completed, artefact, chosen)

