"""Windows cut and normalised: the one stage that training and serving share.

Training must see exactly the windows the service will later score (same ring buffer, same
per-key normalisation, each window scaled by its key's statistics right after its last event),
so both build their windows through `WindowStage` rather than each wiring WindowStore and
KeyNormalizer.

The stage also owns the slots' lifecycle. Its store holds the key -> slot registry; every other
stage with per-slot arrays (its normaliser, and the detector's threshold and episodes, added with
`add_slot_stage`) is grown to the registry's capacity and has the slots it freed reset by
`sync_slots`, the one place that tells them.

With a ``device`` the ring's values live there and the windows are normalised there too, with
statistics computed on the host ([B, F], small) and uploaded; training keeps everything in numpy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from stream_detector.config import Settings
from stream_detector.engine.flat import FlatLineTracker
from stream_detector.engine.normalize import KeyNormalizer
from stream_detector.engine.scan import rank_steps
from stream_detector.engine.slots import SlotArrays
from stream_detector.engine.spread import SpreadTracker, window_spread
from stream_detector.engine.types import DueWindows, EventBatch, IngestReport
from stream_detector.engine.windows import WindowStore


@dataclass(frozen=True)
class CutWindows:
    """One step's windows, cut from the ring but not yet normalised."""

    batch: EventBatch  # the events this step took: the whole batch or its first part
    due: DueWindows
    report: IngestReport


@dataclass(frozen=True)
class StagedWindows:
    batch: EventBatch  # the events this step took: the whole batch or its first part
    due: DueWindows
    normalised: np.ndarray | Tensor  # float32 [B, W, F], where the window store keeps values
    report: IngestReport
    # float32 [B, F]: each window's key statistics right after its last event (its scaling).
    mean: np.ndarray
    std: np.ndarray
    # bool [B, F]: features in a flat line at the window's last event, or near-flat over the
    # window (all false when both rules are off).
    flat: np.ndarray


class WindowStage:
    def __init__(
        self,
        settings: Settings,
        norm_mean: np.ndarray,
        norm_std: np.ndarray,
        stride: int,
        device: torch.device | None = None,
    ) -> None:
        n_features = len(settings.input.value_fields)
        window = settings.window
        self.stride = stride
        self.warmup = settings.normalize.warmup
        self.store = WindowStore(
            window.size,
            n_features,
            initial_capacity=window.initial_capacity,
            max_keys=window.max_keys,
            idle_ttl_s=window.idle_ttl_s,
            device=device,
        )
        self.normalizer = KeyNormalizer(
            n_features,
            np.asarray(norm_mean, dtype=np.float32),
            np.asarray(norm_std, dtype=np.float32),
            prior_weight=settings.normalize.prior_weight,
            horizon=settings.normalize.horizon,
            min_std=settings.normalize.min_std,
            min_relative_std=settings.normalize.min_relative_std,
            clip_sigma=settings.normalize.clip_sigma,
            clip_after=settings.normalize.warmup,
            z_limit=settings.normalize.z_limit,
            capacity=self.store.capacity,
        )
        # The per-slot stages that follow the store's slots, by the name their arrays carry in
        # a snapshot. The store is not among them: it keeps itself in step as slots change.
        self._followers: dict[str, SlotArrays] = {"normalizer": self.normalizer}
        # Flat lines are judged on readings only: bucket counts repeat by nature.
        readings = settings.input.mode == "events"
        self.flat: FlatLineTracker | None = None
        if readings and settings.threshold.flat_factor > 0:
            # A flat run learnt after as many readings as a key's threshold warm-up spans.
            self.flat = FlatLineTracker(
                n_features,
                settings.threshold.flat_factor,
                window.size,
                settings.threshold.warmup * window.stride,
                self.store.capacity,
            )
            self._followers["flat"] = self.flat
        self.spread: SpreadTracker | None = None
        if readings and settings.threshold.flat_spread > 0:
            self.spread = SpreadTracker(
                n_features,
                settings.threshold.flat_spread,
                settings.threshold.warmup,
                self.store.capacity,
            )
            self._followers["spread"] = self.spread
        # Followers kept in step but left out of snapshots (a shadow model's state).
        self._transient: set[str] = set()

    @property
    def slot_stages(self) -> dict[str, SlotArrays]:
        """Every stage with per-slot arrays that a snapshot holds, by snapshot name, the store
        (owner of the slots) first."""
        followers = self._followers.items()
        kept = {name: stage for name, stage in followers if name not in self._transient}
        return {"windows": self.store, **kept}

    def add_slot_stage(self, name: str, stage: SlotArrays, *, snapshot: bool = True) -> None:
        """Keep ``stage``'s per-slot arrays in step with the store's slots from now on, in
        place of any stage of that name; ``snapshot=False`` keeps it out of snapshots."""
        stage.ensure_capacity(self.store.capacity)
        self._followers[name] = stage
        if snapshot:
            self._transient.discard(name)
        else:
            self._transient.add(name)

    def remove_slot_stage(self, name: str) -> None:
        self._followers.pop(name, None)
        self._transient.discard(name)

    def sync_slots(self, freed: np.ndarray) -> None:
        """Tell every per-slot stage what the registry did since the last call: grow it to the
        registry's capacity, and reset the ``freed`` slots, whose keys are gone (a key that
        takes one of them afterwards must not inherit anything)."""
        capacity = self.store.capacity
        for stage in self._followers.values():
            stage.ensure_capacity(capacity)
            stage.reset(freed)

    def pieces(self, batch: EventBatch) -> Iterator[StagedWindows]:
        """The batch's windows, cut and normalised, in as few steps as give the same result as
        one event at a time (one step, unless an eviction falls inside the batch).

        A generator: the caller finishes each step's windows before the next step's evictions
        reset the per-key state they need.
        """
        while len(batch):
            staged = self.ingest(batch)
            yield staged
            batch = batch.rows(staged.report.taken)

    def ingest(self, batch: EventBatch) -> StagedWindows:
        """One step of `pieces`: the windows of the batch's first ``report.taken`` events, for a
        caller with nothing to read from the freed slots before they are reset."""
        cut = self.cut(batch)
        self.sync_slots(cut.report.freed_slots)
        return self.normalise(cut)

    def cut(self, batch: EventBatch) -> CutWindows:
        """The first half of a step: the store takes the batch's first ``report.taken`` events
        and cuts their due windows. The freed slots still hold their keys' state in the other
        stages until `sync_slots`, which must come before `normalise`."""
        # Windows of keys still in normalisation warm-up are not scored (nor cut): their
        # statistics are too young. Judged by the key's count at each window's own end, so the
        # same stream gives the same scored windows however it is batched.
        due, report = self.store.ingest(batch, self.stride, min_events=self.warmup)
        return CutWindows(batch.rows(0, report.taken), due, report)

    def normalise(self, cut: CutWindows) -> StagedWindows:
        """The second half of a step: fold the events into their keys' statistics and normalise
        each window with its key's statistics right after its own last event."""
        report = cut.report
        # Both per-event stages step through the events by rank within key: ranked once.
        steps = rank_steps(report.event_slots)
        mean, std = self.normalizer.update(
            report.event_slots, cut.batch.values, record=cut.due.event_index, steps=steps
        )
        normalised = self.normalizer.normalize(cut.due.values, mean, std, self.store.ring.upload)
        if self.flat is None:
            flat = np.zeros(mean.shape, dtype=bool)
        else:
            flat = self.flat.update(
                report.event_slots, cut.batch.values, cut.due.event_index, steps=steps
            )
        if self.spread is not None and len(cut.due):
            flat |= self.spread.update(cut.due.slots, window_spread(cut.due.values))
        return StagedWindows(cut.batch, cut.due, normalised, report, mean, std, flat)
