"""Engine rows: events/s of `Detector` in-process (decode included, no Kafka) at steady state.

Decode is timed with the engine because the service pays for it on every message; the stream is
fed in batches of `kafka.batch_size`, the size the service hands the engine. Keys are warmed first
(untimed, without JSON) until every key is past `normalize.warmup`, so the timed part scores
every window that falls due, as a long-running service does.

The shadow pair times one detector alone and one with a candidate in its shadow, chunk by chunk
in turn on the same messages: their ratio is what a shadow period costs, and alternating keeps
the machine's load drifting under both alike, where two rows timed one after the other would
each catch a different moment of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from stream_detector.benchmarking.results import Throughput
from stream_detector.benchmarking.workload import bench_settings, tick_stream
from stream_detector.config import Settings
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector, load_detector

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
            "windows": self.windows,
            "windows_per_s": round(self.windows / self.seconds, 1),
            "decode_share": round(self.decode_seconds / self.seconds, 3),
            "model_share": round(self.model_seconds / self.seconds, 3),
        }


@dataclass(frozen=True)
class ShadowedRun(EngineRun):
    """An engine run with a candidate model in the shadow of the active one; `single` is the
    same messages through a detector without one, timed in alternate batches with it."""

    shadow_windows: int  # windows the candidate judged: every one the active model scored
    single: EngineRun

    @property
    def ratio(self) -> float:
        return self.events_per_s / self.single.events_per_s

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "shadow_windows": self.shadow_windows,
            "single_events_per_s": round(self.single.events_per_s, 1),
            "ratio_to_single": round(self.ratio, 3),
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
    detector = load_detector(settings, artefact_dir)
    ticks = warm_ticks(settings, stride)
    warm = tick_stream(n_keys, 0, ticks, seed=seed, stagger=stride)
    for start in range(0, len(warm), _WARM_CHUNK):
        detector.process(warm.decoded(start, start + _WARM_CHUNK))
    return detector, ticks


@dataclass
class BatchTimer:
    """Running totals of timed batches, each decoded and then run through the engine as the
    service runs a consumed batch; what the engine rows and the aggregate row report."""

    messages: int = 0
    decoded: int = 0  # what decode handed the engine: events, or closed buckets in aggregate mode
    windows: int = 0
    seconds: float = 0.0
    decode_s: float = 0.0
    model_s: float = 0.0

    def add(self, detector: Detector, messages: list[bytes]) -> None:
        began = time.perf_counter()
        decoded = detector.decoder.decode_messages(messages)
        decoded_at = time.perf_counter()
        result = detector.process(decoded)
        self.seconds += time.perf_counter() - began
        self.decode_s += decoded_at - began
        self.model_s += result.model_seconds
        self.messages += len(messages)
        self.decoded += len(decoded.batch)
        self.windows += len(result.scored)

    def add_chunk(
        self, detector: Detector, payloads: list[bytes], until: float = math.inf
    ) -> None:
        """`payloads` in batches of kafka.batch_size, stopping once `until` seconds are timed."""
        batch = detector.settings.kafka.batch_size
        for start in range(0, len(payloads), batch):
            self.add(detector, payloads[start : start + batch])
            if self.seconds >= until:
                break


def time_batches(
    detector: Detector, chunks: Iterator[list[bytes]], *, events: int, max_seconds: float
) -> BatchTimer:
    """Time up to `events` messages in batches of kafka.batch_size, stopping early once
    `max_seconds` are timed.

    Messages come a chunk at a time from `chunks`, made between timed stretches, so slow rows
    (stride 1) do not wait for messages they will never process.
    """
    timer = BatchTimer()
    while timer.messages < events and timer.seconds < max_seconds:
        timer.add_chunk(detector, next(chunks)[: events - timer.messages], until=max_seconds)
    return timer


def time_in_turn(
    detectors: Sequence[Detector],
    chunks: Iterator[list[bytes]],
    *,
    events: int,
    max_seconds: float,
) -> list[BatchTimer]:
    """time_batches for several detectors, a timer each: every chunk goes through all of them
    in turn, until `max_seconds` are timed all together.

    Turns are whole chunks, not batches: a detector taking over evicts the other's keys from
    the CPU caches, and per batch that cost (measured 10 to 15% at 10k keys) would weigh on
    every row of the pair. The order reverses every chunk, so none of them always finds the
    messages in the cache from the one before it.
    """
    timers = [BatchTimer() for _ in detectors]
    turn = list(zip(timers, detectors, strict=True))
    while timers[0].messages < events and sum(t.seconds for t in timers) < max_seconds:
        payloads = next(chunks)[: events - timers[0].messages]
        for timer, detector in turn:
            timer.add_chunk(detector, payloads)
        turn.reverse()
    return timers


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
    """Steady-state events/s of the engine at `n_keys` keys and `stride` (see time_batches)."""
    detector, tick = warmed_detector(artefact_dir, n_keys, stride, device=device, seed=seed)
    timer = time_batches(
        detector,
        _tick_chunks(n_keys, tick, stride, seed),
        events=events,
        max_seconds=max_seconds,
    )
    run = EngineRun(*_engine_fields(timer, n_keys, stride))
    log.info("engine row", **run.as_dict())
    return run


def shadow_pair(
    artefact_dir: Path,
    candidate_dir: Path,
    n_keys: int,
    stride: int,
    *,
    events: int,
    max_seconds: float,
    device: str,
    seed: int,
) -> ShadowedRun:
    """Steady-state events/s of the engine with `candidate_dir`'s model in the shadow of
    `artefact_dir`'s, and without it, timed in turn (time_in_turn) for `max_seconds` in all.

    The shadow starts once the keys are warm, as the service starts one after a retrain. Its
    per-key thresholds then warm up for `threshold.warmup` windows a key, and the timed part
    stays inside that stretch: at thousands of keys it is nearly all of a shadow period, whose
    compared windows (`lifecycle.shadow_windows`) then take a few ticks.
    """
    single, tick = warmed_detector(artefact_dir, n_keys, stride, device=device, seed=seed)
    shadowed, _ = warmed_detector(artefact_dir, n_keys, stride, device=device, seed=seed)
    shadowed.start_shadow(load_artefact(candidate_dir, shadowed.settings, shadowed.device))
    alone, beside = time_in_turn(
        [single, shadowed],
        _tick_chunks(n_keys, tick, stride, seed),
        events=events,
        max_seconds=max_seconds,
    )
    assert shadowed.shadow is not None  # started above, and only a lifecycle stops it
    run = ShadowedRun(
        *_engine_fields(beside, n_keys, stride),
        shadow_windows=shadowed.shadow.windows,
        single=EngineRun(*_engine_fields(alone, n_keys, stride)),
    )
    log.info("shadow pair", **run.as_dict())
    return run


def _engine_fields(
    timer: BatchTimer, n_keys: int, stride: int
) -> tuple[int, float, int, int, int, float, float]:
    """An EngineRun's fields, in order, from a timer of the event stream."""
    return (
        timer.decoded,
        timer.seconds,
        n_keys,
        stride,
        timer.windows,
        timer.decode_s,
        timer.model_s,
    )


def _tick_chunks(n_keys: int, tick: int, stride: int, seed: int) -> Iterator[list[bytes]]:
    """The stream's messages from `tick` on, about _CHUNK_EVENTS at a time."""
    chunk_ticks = max(1, _CHUNK_EVENTS // n_keys)
    while True:
        yield tick_stream(n_keys, tick, chunk_ticks, seed=seed, stagger=stride).payloads()
        tick += chunk_ticks
