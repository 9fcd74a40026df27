"""Memory row: bytes of detector state per tracked key, at K keys.

Measured as the growth of traced memory (tracemalloc, to which numpy reports its buffers) between
a fresh detector and the same detector tracking K keys, after garbage collection, divided by K.
That counts exactly what the keys cost and nothing else (not the model, the interpreter or
allocator slack), split by tracemalloc domain into:

- arrays: every per-slot numpy array of every stage (ring buffer of values and times, normaliser,
  threshold, episodes, the slot -> key table), which is what grows with W and F;
- key objects: the key strings, their dict entries and slot integers, a per-key constant that
  depends on the keys' length, not on the window.

The memory target (benchmarks/README.md) reads "2 x W x F x 4 bytes plus a small constant"; the arrays are held to the
2x and the key objects are the constant.

Why not RSS: in a process that has already run other rows, the allocator serves the new arrays
from heap it kept after earlier frees (glibc raises its mmap threshold after large frees), so the
RSS growth says more about the history of the process than about the keys.

Per-slot arrays are allocated by capacity, which doubles up to `window.max_keys`; the row sets
max_keys to K (100k is also the default), so capacity equals K and the figure carries no growth
slack.
"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from stream_detector.benchmarking.workload import FEATURES, WINDOW, bench_settings, tick_stream
from stream_detector.detector.artefact import load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.engine.model import select_device

log = structlog.get_logger(__name__)

_NUMPY_DOMAIN = np.lib.tracemalloc_domain


@dataclass(frozen=True)
class MemoryRun:
    keys: int
    array_bytes: int
    object_bytes: int

    @property
    def bytes_per_key(self) -> float:
        return (self.array_bytes + self.object_bytes) / self.keys

    @property
    def array_bytes_per_key(self) -> float:
        return self.array_bytes / self.keys

    def as_dict(self) -> dict[str, float | int | None]:
        raw = WINDOW * len(FEATURES) * 4
        return {
            "keys": self.keys,
            "bytes_per_key": round(self.bytes_per_key, 1),
            "array_bytes_per_key": round(self.array_bytes_per_key, 1),
            "key_object_bytes_per_key": round(self.object_bytes / self.keys, 1),
            "window_raw_bytes": raw,
            "arrays_to_window_raw": round(self.array_bytes_per_key / raw, 3),
        }


def _domain_bytes(snapshot: tracemalloc.Snapshot) -> tuple[int, int]:
    """(numpy buffers, everything else) in a snapshot."""
    arrays = sum(t.size for t in snapshot.traces if t.domain == _NUMPY_DOMAIN)
    total = sum(t.size for t in snapshot.traces)
    return arrays, total - arrays


def state_bytes_per_key(artefact_dir: Path, n_keys: int, *, device: str, seed: int) -> MemoryRun:
    """Growth of a detector's state from fresh to tracking `n_keys` keys, one event each: a key's
    per-slot state is allocated in full when it takes its slot."""
    # Capacity 1 when fresh and max_keys = K: the fresh detector holds no per-slot state, and
    # the grown one holds exactly K slots.
    settings = bench_settings(1, device=device, window={"initial_capacity": 1, "max_keys": n_keys})
    chosen = select_device(device)
    artefact = load_artefact(artefact_dir, settings, chosen)

    tracemalloc.start()
    try:
        fresh = Detector(settings, artefact, chosen)
        gc.collect()
        before = _domain_bytes(tracemalloc.take_snapshot())
        del fresh
        detector = Detector(settings, artefact, chosen)
        detector.process(tick_stream(n_keys, 0, 1, seed=seed).decoded(0, n_keys))
        gc.collect()
        after = _domain_bytes(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    if detector.n_keys != n_keys:
        raise RuntimeError(f"expected {n_keys} tracked keys, the detector has {detector.n_keys}")
    run = MemoryRun(n_keys, after[0] - before[0], after[1] - before[1])
    log.info("memory row", **run.as_dict())
    return run
