"""Windows cut and normalised: the one stage that training and serving share.

Training must see exactly the windows the service will later score (same ring buffer, same
per-key normalisation, each window scaled by its key's statistics right after its last event),
so both build their windows through `WindowStage.pieces` rather than each wiring WindowStore and
KeyNormalizer.

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
from stream_detector.engine.normalize import KeyNormalizer
from stream_detector.engine.types import DueWindows, EventBatch, IngestReport
from stream_detector.engine.windows import WindowStore


@dataclass(frozen=True)
class StagedWindows:
    batch: EventBatch  # the events this step took: the whole batch or its first part
    due: DueWindows
    normalised: np.ndarray | Tensor  # float32 [B, W, F], where the window store keeps values
    report: IngestReport
    # float32 [B, F]: each window's key statistics right after its last event (its scaling).
    mean: np.ndarray
    std: np.ndarray


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

    def pieces(self, batch: EventBatch) -> Iterator[StagedWindows]:
        """The batch's windows, cut and normalised, in as few steps as give the same result as
        one event at a time (one step, unless an eviction falls inside the batch).

        A generator: the caller finishes each step's windows (scores, thresholds, episodes)
        before the next step's evictions reset the per-key state they need.
        """
        while len(batch):
            staged = self.ingest(batch)
            yield staged
            batch = batch.rows(staged.report.taken)

    def release_silent(self) -> tuple[np.ndarray, np.ndarray]:
        """`WindowStore.release_silent`, with the freed slots' statistics reset."""
        slots, keys = self.store.release_silent()
        self.normalizer.reset(slots)
        return slots, keys

    def ingest(self, batch: EventBatch) -> StagedWindows:
        """One step of `pieces`: the windows of the batch's first ``report.taken`` events."""
        # Windows of keys still in normalisation warm-up are not scored (nor cut): their
        # statistics are too young. Judged by the key's count at each window's own end, so the
        # same stream gives the same scored windows however it is batched.
        due, report = self.store.ingest(batch, self.stride, min_events=self.warmup)
        batch = batch.rows(0, report.taken)
        self.normalizer.ensure_capacity(self.store.capacity)
        if len(report.freed_slots):
            self.normalizer.reset(report.freed_slots)
        # Each window is normalised with its key's statistics right after its own last event.
        mean, std = self.normalizer.update(
            report.event_slots, batch.values, record=due.event_index
        )
        normalised = self.normalizer.normalize(due.values, mean, std, self.store.ring.upload)
        return StagedWindows(batch, due, normalised, report, mean, std)
