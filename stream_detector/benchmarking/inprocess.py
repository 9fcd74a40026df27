"""Engine rows: events/s of `Detector` in-process (decode included, no Kafka) at steady state.

Decode is timed with the engine because the service pays for it on every message; the stream is
fed in batches of `kafka.batch_size`, the size the service hands the engine. Keys are warmed first
(untimed, without JSON) until every key is past `normalize.warmup`, so the timed part scores
every window that falls due, as a long-running service does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from stream_detector.artefact import load_artefact
from stream_detector.benchmarking.report import Throughput
from stream_detector.benchmarking.workload import bench_settings, tick_stream
from stream_detector.config import Settings
from stream_detector.engine.detector import Detector
from stream_detector.engine.model import select_device

log = structlog.get_logger(__name__)

_WARM_CHUNK = 100_000  # events per warm-up call: big, because warm-up is not measured
_CHUNK_EVENTS = 100_000  # messages generated between timed stretches


@dataclass(frozen=True)
class EngineRun(Throughput):
    keys: int
    stride: int
    windows: int
    decode_seconds: float
    model_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "keys": self.keys,
            "stride": self.stride,
            **super().as_dict(),
            "windows_per_s": round(self.windows / self.seconds, 1),
            "decode_share": round(self.decode_seconds / self.seconds, 3),
            "model_share": round(self.model_seconds / self.seconds, 3),
        }


def warm_ticks(settings: Settings, stagger: int) -> int:
    """Ticks after which every key of a tick_stream is past the normalisation warm-up."""
    return stagger - 1 + max(settings.normalize.warmup, settings.window.size)


def warmed_detector(
    artefact_dir: Path, n_keys: int, stride: int, *, device: str, seed: int
) -> tuple[Detector, int]:
    """A detector whose keys are all warm (stream staggered by the stride); returns the next tick.

    Warm-up skips JSON (it is not timed) and runs in big batches.
    """
    settings = bench_settings(stride, device=device)
    chosen = select_device(device)
    detector = Detector(settings, load_artefact(artefact_dir, settings, chosen), chosen)
    ticks = warm_ticks(settings, stride)
    warm = tick_stream(n_keys, 0, ticks, seed=seed, stagger=stride)
    for start in range(0, len(warm), _WARM_CHUNK):
        detector.process(warm.decoded(start, start + _WARM_CHUNK))
    return detector, ticks


def engine_throughput(
    artefact_dir: Path,
    n_keys: int,
    stride: int,
    *,
    events: int,
    max_seconds: float,
    device: str,
    seed: int,
) -> EngineRun:
    """Time up to `events` steady-state events, stopping early once `max_seconds` are timed.

    Messages are made a chunk at a time between timed stretches, so slow rows (stride 1) do not
    pay to generate messages they will never process.
    """
    detector, tick = warmed_detector(artefact_dir, n_keys, stride, device=device, seed=seed)
    batch = detector.settings.kafka.batch_size
    chunk_ticks = max(1, _CHUNK_EVENTS // n_keys)
    done = windows = 0
    seconds = decode_s = model_s = 0.0
    while done < events and seconds < max_seconds:
        chunk = tick_stream(n_keys, tick, chunk_ticks, seed=seed, stagger=stride)
        tick += chunk_ticks
        payloads = chunk.payloads(0, min(len(chunk), events - done))
        for start in range(0, len(payloads), batch):
            began = time.perf_counter()
            decoded = detector.decoder.decode_messages(payloads[start : start + batch])
            decoded_at = time.perf_counter()
            result = detector.process(decoded)
            seconds += time.perf_counter() - began
            decode_s += decoded_at - began
            model_s += result.model_seconds
            windows += len(result.scored)
            done += len(decoded.batch)
            if seconds >= max_seconds:
                break
    run = EngineRun(done, seconds, n_keys, stride, windows, decode_s, model_s)
    log.info("engine row", **run.as_dict())
    return run
