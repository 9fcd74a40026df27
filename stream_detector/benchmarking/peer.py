"""The peer row: River's HalfSpaceTrees, one model per key, fed the benchmark stream event by event.

This is River's ordinary streaming idiom (score_one, then learn_one, per event, one model per
key). It gets the already decoded values, so it pays no JSON cost while the engine rows do: the
comparison flatters River, not the engine.

A HalfSpaceTrees model only scores once its first reference window (250 events) is full, so the
row is timed after every model is past it. River cannot hold the engine rows' key counts: each
model builds 10 trees of 511 nodes on its first event, over a megabyte per key (the row measures
it), so 10k keys would need over 10 GB. The row therefore runs the same generator on a few
hundred keys: enough models that they do not fit in the CPU caches, as they would not at scale.
Each key's model is independent, so beyond that the per-event cost does not depend on K.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from stream_detector.benchmarking.results import Throughput
from stream_detector.benchmarking.workload import FEATURES, tick_stream

log = structlog.get_logger(__name__)

WARM_EVENTS = 250  # HalfSpaceTrees' default window_size


def river_available() -> bool:
    try:
        import river  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class PeerRun(Throughput):
    keys: int
    model_bytes: int  # traced memory of one key's model after its first event

    def as_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, **super().as_dict(), "model_bytes_per_key": self.model_bytes}


def _feed(models: list[Any], key_ids: np.ndarray, values: np.ndarray) -> None:
    # River takes one dict per event; this loop is how the library is used. Values go in as
    # Python floats of the rounded numbers, as a JSON decoder would have produced them.
    rows = np.round(values.astype(np.float64), 3).tolist()
    for key_id, row in zip(key_ids.tolist(), rows, strict=True):
        event = dict(zip(FEATURES, row, strict=True))
        model = models[key_id]
        model.score_one(event)
        model.learn_one(event)


def _model(seed: int) -> Any:
    from river import anomaly, preprocessing

    return preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=seed)


def _model_bytes(seed: int) -> int:
    """Memory one key costs River: a model, measured after its first event built its trees."""
    tracemalloc.start()
    try:
        model = _model(seed)
        model.learn_one(dict.fromkeys(FEATURES, 0.0))
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def river_throughput(n_keys: int, *, events: int, seed: int) -> PeerRun:
    """Warm one MinMaxScaler | HalfSpaceTrees per key, then time `events` more events."""
    warm = tick_stream(n_keys, 0, WARM_EVENTS, seed=seed)  # every key in every tick
    timed = tick_stream(n_keys, WARM_EVENTS, -(-events // n_keys), seed=seed)
    models = [_model(seed) for _ in range(n_keys)]
    _feed(models, warm.key_ids, warm.values)
    started = time.perf_counter()
    _feed(models, timed.key_ids[:events], timed.values[:events])
    seconds = time.perf_counter() - started
    run = PeerRun(min(events, len(timed)), seconds, n_keys, _model_bytes(seed))
    log.info("river row", **run.as_dict())
    return run
