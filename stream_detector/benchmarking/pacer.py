"""The latency phase's producer: fresh events at a fixed rate, each stamped with the wall clock
when it is created, run in a child process.

A producer in the service's own process would share its interpreter lock, and every message
created in Python would delay the service's loop: latency would measure the benchmark, not the
service. In production the producers are other processes (usually other machines).
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson
from confluent_kafka import Producer

from stream_detector.benchmarking.kafka_io import send
from stream_detector.benchmarking.workload import FEATURES, SHIFT, tick_stream

_CHUNK_S: Final = 0.002  # the schedule is stamped and sent this many seconds at a time
# A shifted key stays shifted this many of its own events: long enough for the two exceeding
# windows (episodes.min_consecutive) an alert needs at stride 16.
SHIFT_TICKS: Final = 3 * 16
MIN_TICKS: Final = SHIFT_TICKS + 16  # the phase is at least this long, so alerts can happen
_SHIFTED_SHARE: Final = 0.02  # of the keys, each shifted once during the phase
_MIN_SHIFTED: Final = 5
_NOT_SHIFTED: Final = np.iinfo(np.int64).max // 2


@dataclass(frozen=True)
class PacePlan:
    """Everything the child needs, as plain picklable values."""

    producer_config: dict[str, Any]
    topic: str
    n_keys: int
    first_tick: int
    n_ticks: int
    rate: float
    shift_start: np.ndarray  # int64 [K]: tick (within the phase) a key's shift begins
    seed: int

    @property
    def events(self) -> int:
        return self.n_ticks * self.n_keys  # first_tick is past every key's joining tick

    @property
    def shifted_keys(self) -> int:
        return int(np.count_nonzero(self.shift_start != _NOT_SHIFTED))

    @staticmethod
    def of(
        producer_config: dict[str, Any],
        topic: str,
        *,
        n_keys: int,
        first_tick: int,
        rate: float,
        seconds: float,
        seed: int,
    ) -> PacePlan:
        """`rate` events/s for at least `seconds` (and MIN_TICKS ticks); some keys shifted."""
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        n_ticks = max(int(np.ceil(rate * seconds / n_keys)), MIN_TICKS)
        rng = np.random.default_rng(seed)
        n_shifted = min(n_keys, max(_MIN_SHIFTED, int(n_keys * _SHIFTED_SHARE)))
        shift_start = np.full(n_keys, _NOT_SHIFTED, dtype=np.int64)
        shifted = rng.choice(n_keys, n_shifted, replace=False)
        shift_start[shifted] = rng.integers(0, n_ticks - SHIFT_TICKS, n_shifted)
        return PacePlan(
            producer_config, topic, n_keys, first_tick, n_ticks, rate, shift_start, seed
        )


def _messages(plan: PacePlan) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Each event's message split around its time: (keys, heads, tails), encoded beforehand so
    that producing one costs two byte joins, and the producer keeps up on a busy machine."""
    stream = tick_stream(plan.n_keys, plan.first_tick, plan.n_ticks, seed=plan.seed)
    tick = np.arange(len(stream)) // plan.n_keys
    start = plan.shift_start[stream.key_ids]
    values = np.round(stream.values.astype(np.float64), 3)
    values[(tick >= start) & (tick < start + SHIFT_TICKS)] += SHIFT
    names = stream.names[stream.key_ids].tolist()
    heads = [b'{"key":' + orjson.dumps(name) + b',"ts":' for name in names]
    # ',"f0":..,"f3":..}': the values object without its opening brace.
    tails = [
        b"," + orjson.dumps(dict(zip(FEATURES, row, strict=True)))[1:] for row in values.tolist()
    ]
    return [name.encode() for name in names], heads, tails


def _produce(plan: PacePlan) -> None:
    keys, heads, tails = _messages(plan)
    producer = Producer(plan.producer_config)
    # Connect and learn the topic's leader before the first event is stamped: otherwise the
    # first events wait in the producer for its connection, and that handshake (hundreds of ms
    # on a busy machine) would be measured as the service's latency.
    producer.list_topics(plan.topic, timeout=30)
    per_chunk = max(1, int(plan.rate * _CHUNK_S))
    began = time.monotonic()
    for sent in range(0, len(keys), per_chunk):
        # Sleep until this chunk is due, so the offered rate is the plan's however fast we are.
        delay = began + sent / plan.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = orjson.dumps(time.time())
        for i in range(sent, min(sent + per_chunk, len(keys))):
            send(producer, plan.topic, heads[i] + now + tails[i], keys[i])
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("paced events were not acknowledged by the broker")


def start_pacer(plan: PacePlan) -> multiprocessing.process.BaseProcess:
    """The producer in a fresh (spawned) process: nothing of this process's state goes with it."""
    process = multiprocessing.get_context("spawn").Process(
        target=_produce, args=(plan,), name="bench-pacer", daemon=True
    )
    process.start()
    return process
