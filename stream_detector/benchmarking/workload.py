"""The synthetic stream and the untrained model every benchmark row shares.

Throughput does not depend on what the model learned, only on its shape, so the suite scores with
random weights saved through the real `save_artefact`: no training time, and the detector loads it
exactly as it would a trained one. The stream emits every key once per tick, in a fresh random
order each tick, so after `normalize.warmup` ticks every key is fully warm (steady state), and a
batch touches as many distinct keys as it can: the least cache-friendly order, not the kindest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import torch

from stream_detector.config import Settings
from stream_detector.detector.artefact import ModelArtefact, TrainingResult, save_artefact
from stream_detector.engine.model import LSTMAutoencoder, WindowScorer
from stream_detector.engine.types import Decoded, EventBatch

FEATURES: Final = ("f0", "f1", "f2", "f3")
WINDOW: Final = 32
T0: Final = 1_700_000_000.0
# Global threshold = this x the 99.9% quantile of normal windows' scores: normal data then almost
# never alerts, and the level shifts the latency row injects (SHIFT sigmas) always do.
_THRESHOLD_MARGIN: Final = 1.5
_CALIBRATION_QUANTILE: Final = 0.999
SHIFT: Final = 10.0


def bench_settings(
    stride: int,
    *,
    model_path: Path | None = None,
    device: str = "auto",
    kafka: dict[str, Any] | None = None,
    window: dict[str, Any] | None = None,
    http_port: int | None = None,
    state_dir: Path | None = None,
) -> Settings:
    """The benchmark's engine shape (W=32, F=4, benchmarks/README.md) with every other setting at its default.

    Built directly rather than through load_settings so SD_* variables in the environment cannot
    silently change what is measured. `state_dir` keeps the service's checkpoints (the default
    local store) out of the user's own state directory.
    """
    return Settings(
        input={"key_field": "key", "timestamp_field": "ts", "value_fields": FEATURES},
        window={"size": WINDOW, "stride": stride, **(window or {})},
        model={"path": model_path, "device": device},
        kafka=kafka or {},
        observability={"http_port": http_port},
        state={} if state_dir is None else {"dir": state_dir},
    )


def key_names(n_keys: int) -> np.ndarray:
    return np.array([f"device-{i:06d}" for i in range(n_keys)], dtype=object)


@dataclass(frozen=True)
class EventStream:
    """Events in arrival order: key_ids int64 [N], ts float64 [N], values float32 [N, F]."""

    names: np.ndarray  # object [K], the key text of each key id
    key_ids: np.ndarray
    ts: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.key_ids.shape[0])

    def decoded(self, start: int, stop: int) -> Decoded:
        """Rows [start, stop) as decode would return them, to warm up without JSON's cost."""
        n = min(stop, len(self)) - start
        return Decoded(
            EventBatch(
                index=np.arange(n, dtype=np.int64),
                keys=self.names[self.key_ids[start:stop]],
                ts=self.ts[start:stop],
                values=self.values[start:stop],
            )
        )

    def payloads(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        """JSON messages as a producer would write them (generation is never timed)."""
        stop = len(self) if stop is None else stop
        names = self.names[self.key_ids[start:stop]].tolist()
        ts = self.ts[start:stop].tolist()
        # float64 and re-rounded: float32's repr would print ~17 digits and bloat the messages.
        values = np.round(self.values[start:stop].astype(np.float64), 3).tolist()
        return [
            orjson.dumps({"key": key, "ts": t, **dict(zip(FEATURES, row, strict=True))})
            for key, t, row in zip(names, ts, values, strict=True)
        ]

    def kafka_keys(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        return [k.encode() for k in self.names[self.key_ids[start:stop]].tolist()]


def tick_stream(
    n_keys: int,
    first_tick: int,
    n_ticks: int,
    *,
    seed: int,
    stagger: int = 1,
    t0: float = T0,
    tick_s: float = 1.0,
) -> EventStream:
    """Ticks [first_tick, first_tick + n_ticks) of K keys; each tick is one event per key.

    Key k joins at tick k % stagger. With stride S, keys in step would all have their windows
    fall due in the same tick, one tick in S, and a batch would hold every key's window or none;
    stagger=S spreads them evenly. Values are N(0, 1) rounded to 3 decimals, so messages have a
    realistic size (~90 bytes).
    """
    ticks = np.arange(first_tick, first_tick + n_ticks)
    rng = np.random.default_rng([seed, first_tick, n_ticks])
    order = np.argsort(rng.random((n_ticks, n_keys)), axis=1)
    key_ids = order.reshape(-1).astype(np.int64)
    tick = np.repeat(ticks, n_keys)
    within = np.tile(np.arange(n_keys) / n_keys, n_ticks)
    ts = t0 + (tick + within) * tick_s
    values = np.round(rng.normal(size=(n_ticks * n_keys, len(FEATURES))), 3).astype(np.float32)
    joined = tick >= key_ids % stagger
    return EventStream(key_names(n_keys), key_ids[joined], ts[joined], values[joined])


def untrained_artefact(directory: Path, settings: Settings, *, seed: int = 0) -> ModelArtefact:
    """Random weights with a threshold calibrated on normal windows, saved as a real artefact."""
    torch.manual_seed(seed)
    n_features = len(settings.input.value_fields)
    model = LSTMAutoencoder(
        n_features,
        settings.window.size,
        settings.model.hidden_size,
        settings.model.num_layers,
        settings.model.latent_size,
    ).eval()
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(2048, settings.window.size, n_features)).astype(np.float32)
    scorer = WindowScorer(
        model,
        torch.device("cpu"),
        settings.model.batch_size,
        score_steps=settings.window.score_steps,
    )
    scores = scorer.score(normal)
    quantile = float(np.quantile(scores.scores, _CALIBRATION_QUANTILE))
    result = TrainingResult(
        norm_mean=(0.0,) * n_features,
        norm_std=(1.0,) * n_features,
        calibration_quantiles={str(_CALIBRATION_QUANTILE): quantile},
        global_threshold=quantile * _THRESHOLD_MARGIN,
        training={"untrained": True, "why": "benchmarks: scoring costs the same trained or not"},
    )
    return save_artefact(directory, model, settings, result)
