"""The aggregate-mode engine row: raw flow events/s in-process, no Kafka.

What is timed is everything the service does to a raw event after consuming it: JSON decode,
per-partition bucketing (sums, HyperLogLog distinct counts, watermark, idle keys), then the windows
of closed buckets, the model, thresholds and episodes. The stream is fed in batches of
`kafka.batch_size`, as the service hands them to the engine.

Every source key sends one flow per second (so ten per 10 s bucket), slightly out of order, to a
few of its usual ports and hosts. Before timing, the keys' windows are warmed with bucket rows
directly (untimed, no JSON, no aggregation), so every bucket that closes in the timed part
completes a window that is scored, as in a long-running service. The model is an untrained one of
the suite's shape: what a window costs does not depend on the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson
import structlog
import torch

from stream_detector.benchmarking.inprocess import EngineRun, time_batches
from stream_detector.benchmarking.results import Row, aggregate_id, keys_label
from stream_detector.benchmarking.workload import WINDOW
from stream_detector.config import Settings
from stream_detector.detector.artefact import TrainingResult, create_artefact
from stream_detector.detector.facade import Detector
from stream_detector.engine.model import LSTMAutoencoder, select_device
from stream_detector.engine.types import Decoded, EventBatch

log = structlog.get_logger(__name__)

BUCKET_S: Final = 10.0
_FEATURES: Final = (
    {"name": "flows", "agg": "count"},
    {"name": "bytes", "agg": "sum", "field": "bytes"},
    {"name": "dst_ports", "agg": "distinct", "field": "dst_port"},
    {"name": "dst_hosts", "agg": "distinct", "field": "dst_host"},
)
# Typical bucket values of the stream below: the warm-up rows and the model's normalisation.
_BUCKET_MEAN: Final = (10.0, 8_000.0, 3.0, 3.0)
_BUCKET_STD: Final = (1.0, 2_500.0, 1.0, 1.0)
_JITTER_S: Final = 1.0  # arrival disorder, within allowed lateness
_CHUNK_EVENTS: Final = 100_000  # flows generated between timed stretches
_T0: Final = 1_700_000_000.0


@dataclass(frozen=True)
class AggregateRun(EngineRun):
    """An engine run whose events are raw flows; `buckets` closed from them fed the windows."""

    buckets: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "bucket_s": BUCKET_S,
            "buckets": self.buckets,
            "buckets_per_s": round(self.buckets / self.seconds, 1),
        }


def aggregate_settings(*, device: str = "auto") -> Settings:
    """Aggregate mode over the flow stream, windows of the suite's size W, every bucket scored.

    Built directly, as bench_settings, so SD_* variables cannot change what is measured.
    """
    return Settings(
        input={
            "mode": "aggregate",
            "key_field": "src",
            "timestamp_field": "ts",
            "value_fields": [feature["name"] for feature in _FEATURES],
        },
        aggregate={
            "bucket_width_s": BUCKET_S,
            "allowed_lateness_s": 2 * _JITTER_S,
            "features": list(_FEATURES),
        },
        window={"size": WINDOW, "stride": 1},
        model={"device": device},
    )


def aggregate_row(
    keys: int, *, events: int, max_seconds: float, device: str = "cpu", seed: int = 0
) -> Row:
    """Raw flow events/s of the aggregate-mode engine at `keys` source keys: up to `events`
    flows, stopping early once `max_seconds` are timed."""
    run = aggregate_throughput(
        keys, events=events, max_seconds=max_seconds, device=device, seed=seed
    )
    data = run.as_dict()
    detail = (
        f"{data['buckets_per_s']:,.0f} buckets/s, {data['windows_per_s']:,.0f} windows/s; "
        f"time in decode + bucketing {data['decode_share']:.0%}, model {data['model_share']:.0%}"
    )
    label = f"aggregate engine K={keys_label(keys)} ({BUCKET_S:g} s buckets)"
    return Row(aggregate_id(keys), label, run.events_per_s, detail, data)


def aggregate_throughput(
    keys: int, *, events: int, max_seconds: float, device: str, seed: int
) -> AggregateRun:
    detector = _warmed_detector(keys, device, seed)
    first_second = _warm_buckets(detector.settings) * BUCKET_S
    timer = time_batches(
        detector,
        _flow_chunks(keys, first_second, np.random.default_rng(seed)),
        events=events,
        max_seconds=max_seconds,
    )
    run = AggregateRun(
        timer.messages,
        timer.seconds,
        keys,
        detector.settings.window.stride,
        timer.windows,
        timer.decode_s,
        timer.model_s,
        timer.decoded,
    )
    log.info("aggregate row", **run.as_dict())
    return run


def _flow_chunks(keys: int, second: float, rng: np.random.Generator) -> Iterator[list[bytes]]:
    """The flows from `second` on, about _CHUNK_EVENTS at a time."""
    chunk_seconds = max(1, _CHUNK_EVENTS // keys)
    while True:
        yield _flows(keys, second, chunk_seconds, rng)
        second += chunk_seconds


def _warm_buckets(settings: Settings) -> int:
    """Buckets after which every key's windows are due and past the normalisation warm-up."""
    return max(settings.normalize.warmup, settings.window.size)


def _warmed_detector(keys: int, device: str, seed: int) -> Detector:
    settings = aggregate_settings(device=device)
    chosen = select_device(device)
    torch.manual_seed(seed)
    model = LSTMAutoencoder(
        len(_FEATURES),
        settings.window.size,
        hidden_size=settings.model.hidden_size,
        num_layers=settings.model.num_layers,
        latent_size=settings.model.latent_size,
    )
    result = TrainingResult(_BUCKET_MEAN, _BUCKET_STD, {}, 1.0, {"untrained": True})
    detector = Detector(settings, create_artefact(model, settings, result), chosen)
    rng = np.random.default_rng(seed)
    names = _names(keys)
    for bucket in range(_warm_buckets(settings)):
        values = rng.normal(_BUCKET_MEAN, _BUCKET_STD, size=(keys, len(_FEATURES)))
        detector.process(
            Decoded(
                EventBatch(
                    index=np.arange(keys, dtype=np.int64),
                    keys=names,
                    ts=np.full(keys, _T0 + (bucket + 1) * BUCKET_S),
                    values=np.maximum(values, 0.0).astype(np.float32),
                )
            )
        )
    return detector


def _names(keys: int) -> np.ndarray:
    names = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(keys)]
    return np.array(names, dtype=object)


def _flows(keys: int, first_second: float, n_seconds: int, rng: np.random.Generator) -> list[bytes]:
    """One flow per key per second for `n_seconds`, in arrival order (generation is not timed)."""
    key_ids = np.tile(np.arange(keys), n_seconds)
    ts = _T0 + first_second + np.repeat(np.arange(n_seconds), keys) + rng.random(len(key_ids))
    order = np.argsort(ts + rng.random(len(ts)) * _JITTER_S, kind="stable")
    key_ids, ts = key_ids[order], ts[order]
    names = _names(keys)[key_ids].tolist()
    size = rng.lognormal(6.5, 0.6, len(ts)).astype(np.int64).tolist()
    port = (key_ids * 7 + rng.integers(0, 3, len(ts))) % 1000
    host = (key_ids * 13 + rng.integers(0, 3, len(ts))) % 5000
    hosts = [f"192.168.{h >> 8}.{h & 255}" for h in host.tolist()]
    return [
        orjson.dumps({"src": s, "ts": t, "bytes": b, "dst_port": p, "dst_host": h})
        for s, t, b, p, h in zip(names, ts.tolist(), size, port.tolist(), hosts, strict=True)
    ]
