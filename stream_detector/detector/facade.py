"""The engine facade: one call takes a decoded batch through windows, model, threshold and episodes.

Everything that runs the detector (the Kafka service, replay, evaluate, the demo, tests) goes
through `Detector.process`, so a score seen in a back-test is the score the service would compute.
All per-key state is held in arrays indexed by the window store's slot. The threshold and the
episodes join the window stage's per-slot stages, so whatever frees or grows slots (an ingest,
idle keys, `drop`, `restore`) reaches all of them through `WindowStage.sync_slots`.
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
from stream_detector.detector.artefact import ModelArtefact, load_artefact_and_settings
from stream_detector.detector.feedback import FeedbackLedger
from stream_detector.detector.snapshot import EngineSnapshot
from stream_detector.engine.alerts import Alert
from stream_detector.engine.episodes import EpisodeTracker
from stream_detector.engine.model import WindowScorer, ring_device, select_device
from stream_detector.engine.stage import StagedWindows, WindowStage
from stream_detector.engine.threshold import AdaptiveThreshold
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


def _empty_scored(n_features: int) -> ScoredWindows:
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
    )


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
        self.model_version = meta.model_version
        # What the model learnt besides its weights (calibration, training record), for
        # monitoring against it, e.g. drift.
        self.metadata = meta
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
        self._scorer = WindowScorer(
            artefact.model.to(self.device),
            self.device,
            settings.model.batch_size,
            settings.model.cpu_threads,
            settings.model.cuda_graph,
        )
        # No slots of their own: the stage sizes them to the store and keeps them in step.
        self._threshold = AdaptiveThreshold(settings.threshold, meta.global_threshold, capacity=0)
        self._episodes = EpisodeTracker(
            settings.episodes, self.feature_names, self.model_version, capacity=0
        )
        # Operator feedback: empty until the service (or evaluate --feedback) applies some.
        self.feedback = FeedbackLedger(settings.feedback)
        self._stage.add_slot_stage("threshold", self._threshold)
        self._stage.add_slot_stage("episodes", self._episodes)
        self._n_features = n_features
        log.info(
            "detector ready",
            model_version=self.model_version,
            device=str(self.device),
            device_resident=ring_on is not None,
            features=list(self.feature_names),
            window=settings.window.size,
            stride=settings.window.stride,
        )

    @property
    def n_keys(self) -> int:
        return self._windows.n_keys

    @property
    def open_episodes(self) -> int:
        return self._episodes.open_episodes

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
            return DetectionResult(decoded, _empty_scored(self._n_features), [], 0.0)
        scored_parts: list[ScoredWindows] = []
        alerts: list[Alert] = []
        model_seconds = 0.0
        offset = 0
        while len(batch):
            cut = self._stage.cut(batch)
            alerts += self._evict(cut.report.freed_slots, cut.report.freed_keys)
            staged = self._stage.normalise(cut)
            started = time.perf_counter()
            scored = self._score(staged, offset)
            model_seconds += time.perf_counter() - started
            if len(scored):
                alerts += self._episodes.update(scored)
                scored_parts.append(scored)
            alerts += self._evict(*self._windows.release_silent())
            offset += cut.report.taken
            batch = batch.rows(cut.report.taken)
        scored = _concat(scored_parts) if scored_parts else _empty_scored(self._n_features)
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
        alerts = self._episodes.resolve_evicted(freed, freed_keys)
        self._stage.sync_slots(freed)
        return alerts

    def _score(self, staged: StagedWindows, offset: int) -> ScoredWindows:
        """Score, and judge, the staged windows; event indices count from the whole batch's
        start (`offset` is where the staged piece began)."""
        due = staged.due
        if len(due) == 0:
            return _empty_scored(self._n_features)
        result = self._scorer.score(staged.normalised)
        feedback = self.feedback.adjustments(due.keys, due.end_ts, self.model_version)
        if feedback is None:
            thresholds, exceed = self._threshold.apply(due.slots, result.scores)
        else:
            thresholds, exceed = self._threshold.apply(
                due.slots, result.scores, feedback.divisor, feedback.floor, feedback.learn
            )
        expected = self._normalizer.denormalize(result.last_reconstruction, staged.mean, staged.std)
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
        )


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

