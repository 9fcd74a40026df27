"""Windows cut and normalised: the one stage that training and serving share.

Training must see exactly the windows the service will later score (same ring buffer, same
per-key normalisation, same order of "update statistics, then normalise"), so both build their
windows through `WindowStage.ingest` rather than each wiring WindowStore and KeyNormalizer.

With a ``device`` the ring's values live there and the windows are normalised there too, with
statistics computed on the host ([B, F], small) and uploaded; training keeps everything in numpy.
"""

from __future__ import annotations

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
    due: DueWindows
    normalised: np.ndarray | Tensor  # float32 [B, W, F], where the window store keeps values
    report: IngestReport


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
            capacity=self.store.capacity,
        )

    def ingest(self, batch: EventBatch) -> StagedWindows:
        # Windows of keys still in normalisation warm-up are not scored (nor cut): their
        # statistics are too young. Judged by the key's count at each window's own end, not at
        # the end of the batch, so the same stream gives the same scored windows however it is
        # batched.
        due, report = self.store.ingest(batch, self.stride, min_events=self.warmup)
        self.normalizer.ensure_capacity(self.store.capacity)
        if len(report.freed_slots):
            self.normalizer.reset(report.freed_slots)
        # Statistics take in this batch before its windows are normalised.
        tracked = report.event_slots >= 0
        self.normalizer.update(report.event_slots[tracked], batch.values[tracked])
        normalised = self.normalizer.normalize(due.values, due.slots, self.store.ring.upload)
        return StagedWindows(due, normalised, report)
